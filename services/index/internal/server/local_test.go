package server_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/nixcache/nixcache/nix/compression"
	"github.com/nixcache/nixcache/nix/daemon"
	"github.com/nixcache/nixcache/nix/nar"
	"github.com/nixcache/nixcache/nix/signature"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/catalog"
	"github.com/nixcache/nixcache/services/index/internal/fakedaemon"
	"github.com/nixcache/nixcache/services/index/internal/fakesigner"
	"github.com/nixcache/nixcache/services/index/internal/localstore"
	"github.com/nixcache/nixcache/services/index/internal/nartest"
	"github.com/nixcache/nixcache/services/index/internal/server"
	"github.com/nixcache/nixcache/services/index/internal/signerclient"
)

// localIndex is an index serving the store of a fake daemon.
type localIndex struct {
	*index
	daemon   *fakedaemon.Daemon
	signer   *fakesigner.Signer
	storeDir string
}

func startLocalIndex(t *testing.T, signTimeout time.Duration) *localIndex {
	t.Helper()
	return startLocalIndexWith(t, signTimeout)
}

func startLocalIndexB(b *testing.B) *localIndex {
	b.Helper()
	return startLocalIndexWith(b, signTimeout)
}

func startLocalIndexWith(t testing.TB, signTimeout time.Duration) *localIndex {
	t.Helper()
	dir := t.TempDir()
	storeDir := filepath.Join(dir, "nix", "store")
	d := fakedaemon.New(t, storeDir)
	fake := fakesigner.New(t, storeDir)
	newLocal := func(cat *catalog.Catalog, signer *signerclient.Client) server.LocalStore {
		return localstore.New(localstore.Config{
			StoreDir:     storeDir,
			NixDB:        filepath.Join(dir, "db.sqlite"),
			SyncInterval: time.Second,
			SignTimeout:  signTimeout,
			Log:          slog.New(slog.NewTextHandler(io.Discard, nil)),
		}, cat, d, signer)
	}
	idx := startIndexWith(t, dir, signerConn{fake: fake, timeout: signTimeout},
		localSetup{storeDir: storeDir, newLocal: newLocal})
	return &localIndex{index: idx, daemon: d, signer: fake, storeDir: storeDir}
}

// buildTree registers a store path holding a small tree of every kind of
// node, and returns its info and NAR.
func (l *localIndex) buildTree(t *testing.T, name string, refs ...string) (*daemon.PathInfo, []byte) {
	t.Helper()
	info := l.daemon.Build(t, name, refs, func(p string) {
		for _, d := range []string{"bin", "empty"} {
			if err := os.MkdirAll(filepath.Join(p, d), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		os.WriteFile(filepath.Join(p, "bin", "run"), []byte("#!/bin/sh\necho hi\n"), 0o755)
		os.WriteFile(filepath.Join(p, "data"), bytes.Repeat([]byte(name), 200000), 0o644)
		os.Symlink("data", filepath.Join(p, "link"))
	})
	var buf bytes.Buffer
	if err := nar.DumpPath(&buf, info.StorePath); err != nil {
		t.Fatal(err)
	}
	return info, buf.Bytes()
}

func (l *localIndex) fingerprint(info *indexv1.PathInfo, di *daemon.PathInfo) string {
	return signature.Fingerprint(l.storeDir, info.GetStorePath(), di.NarHash, di.NarSize, info.GetReferences())
}

// TestLocalPaths: paths of the host's store, unknown to the catalogue
// until asked for, are served signed, with their NARs dumped from the store,
// whole or in ranges.
func TestLocalPaths(t *testing.T) {
	l := startLocalIndex(t, signTimeout)
	ctx := context.Background()
	leaf, leafNar := l.buildTree(t, "leaf")
	top, topNar := l.buildTree(t, "top", leaf.StorePath)

	resp, err := l.client.GetPathInfo(ctx, &indexv1.GetPathInfoRequest{HashPart: hashOf(top.StorePath)})
	if err != nil {
		t.Fatalf("GetPathInfo of a local path: %v", err)
	}
	info := resp.GetInfo()
	if info.GetStorePath() != top.StorePath || info.GetNarHash() != top.NarHash.String() || info.GetNarSize() != uint64(len(topNar)) ||
		info.GetFile() != nil || !equalStrings(info.GetReferences(), []string{filepath.Base(leaf.StorePath)}) {
		t.Errorf("GetPathInfo: %v, want the daemon's info of %s, without a file", info, top.StorePath)
	}
	if sigs := info.GetSignatures(); len(sigs) != 1 || !l.signer.Active.Public().Verify(l.fingerprint(info, top), sigs[0]) {
		t.Errorf("signatures %q: want one by the cache key that verifies", sigs)
	}

	unknown := hashOf(l.daemon.NewPath("unknown"))
	_, err = l.client.GetPathInfo(ctx, &indexv1.GetPathInfoRequest{HashPart: unknown})
	wantCode(t, err, codes.NotFound)
	check, err := l.client.CheckPaths(ctx, &indexv1.CheckPathsRequest{HashParts: []string{unknown, hashOf(top.StorePath), hashOf(leaf.StorePath), hashOf(top.StorePath)}})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{hashOf(top.StorePath), hashOf(leaf.StorePath)}; !equalStrings(check.GetPresent(), want) {
		t.Errorf("CheckPaths: %q, want %q", check.GetPresent(), want)
	}

	size := uint64(len(topNar))
	tests := []struct {
		name           string
		expect         string
		offset, length uint64
		want           []byte
	}{
		{"whole", top.NarHash.String(), 0, 0, topNar},
		{"whole, hash in SRI form", top.NarHash.SRI(), 0, 0, topNar},
		{"no expected hash", "", 0, 0, topNar},
		{"range", "", 1000, 300000, topNar[1000:301000]},
		{"suffix", "", size - 5, 0, topNar[size-5:]},
		{"length beyond the end", "", size - 5, 100, topNar[size-5:]},
		{"leaf", leaf.NarHash.String(), 0, 0, leafNar},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sp := top
			if tt.name == "leaf" {
				sp = leaf
			}
			hdr, data, err := getNar(ctx, l.client, &indexv1.GetNarRequest{
				Selector:        &indexv1.GetNarRequest_StoreHash{StoreHash: hashOf(sp.StorePath)},
				ExpectedNarHash: tt.expect, Offset: tt.offset, Length: tt.length,
			})
			if err != nil {
				t.Fatalf("GetNar: %v", err)
			}
			if hdr.GetTotalSize() != sp.NarSize || hdr.GetCompression() != compression.None {
				t.Errorf("header %v, want total %d, none", hdr, sp.NarSize)
			}
			if !bytes.Equal(data, tt.want) {
				t.Errorf("GetNar: %d bytes, want %d", len(data), len(tt.want))
			}
		})
	}

	_, _, err = getNar(ctx, l.client, &indexv1.GetNarRequest{Selector: &indexv1.GetNarRequest_StoreHash{StoreHash: hashOf(top.StorePath)}, ExpectedNarHash: leaf.NarHash.String()})
	wantCode(t, err, codes.NotFound, "not "+leaf.NarHash.String())
	_, _, err = getNar(ctx, l.client, &indexv1.GetNarRequest{Selector: &indexv1.GetNarRequest_StoreHash{StoreHash: hashOf(top.StorePath)}, Offset: size})
	wantCode(t, err, codes.OutOfRange)
	_, _, err = getNar(ctx, l.client, &indexv1.GetNarRequest{Selector: &indexv1.GetNarRequest_StoreHash{StoreHash: unknown}})
	wantCode(t, err, codes.NotFound)

	// Deleted from the store: no NAR, even before any sync noticed.
	l.daemon.Invalidate(t, leaf.StorePath)
	_, _, err = getNar(ctx, l.client, &indexv1.GetNarRequest{Selector: &indexv1.GetNarRequest_StoreHash{StoreHash: hashOf(leaf.StorePath)}})
	wantCode(t, err, codes.NotFound, "no longer in the store")
}

// TestPushedAndLocal: a path both pushed and local is served once, as
// pushed; a push may reference local paths.
func TestPushedAndLocal(t *testing.T) {
	l := startLocalIndex(t, signTimeout)
	ctx := context.Background()
	both, bothNar := l.buildTree(t, "both")
	dep, depNar := l.buildTree(t, "dep")

	// Seen as local first.
	if _, err := l.client.GetPathInfo(ctx, &indexv1.GetPathInfoRequest{HashPart: hashOf(dep.StorePath)}); err != nil {
		t.Fatal(err)
	}
	if _, err := l.client.GetPathInfo(ctx, &indexv1.GetPathInfoRequest{HashPart: hashOf(both.StorePath)}); err != nil {
		t.Fatal(err)
	}
	// Then pushed, referencing a path the cache has only as local.
	file := mustPutNar(t, l.client, nartest.Compress(t, compression.XZ, bothNar))
	pushed := mustPublish(t, l.client, &indexv1.PathInfo{
		StorePath: both.StorePath, NarHash: file.GetNarHash(), NarSize: file.GetNarSize(),
		References: []string{filepath.Base(dep.StorePath)},
		File:       &indexv1.NarFile{FileHash: file.GetFileHash()},
	})

	resp, err := l.client.GetPathInfo(ctx, &indexv1.GetPathInfoRequest{HashPart: hashOf(both.StorePath)})
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.GetInfo(); got.GetFile().GetCompression() != compression.XZ || got.GetUrl() != pushed.GetUrl() {
		t.Errorf("GetPathInfo of a path pushed and local: %v, want the pushed record", got)
	}
	check, err := l.client.CheckPaths(ctx, &indexv1.CheckPathsRequest{HashParts: []string{hashOf(both.StorePath), hashOf(dep.StorePath), hashOf(both.StorePath)}})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{hashOf(both.StorePath), hashOf(dep.StorePath)}; !equalStrings(check.GetPresent(), want) {
		t.Errorf("CheckPaths: %q, want %q", check.GetPresent(), want)
	}
	// The nix-serve URL of the local form still serves the same NAR, from
	// the pushed file: whole, not from an offset (the file is compressed).
	hdr, data, err := getNar(ctx, l.client, &indexv1.GetNarRequest{
		Selector: &indexv1.GetNarRequest_StoreHash{StoreHash: hashOf(both.StorePath)}, ExpectedNarHash: both.NarHash.String()})
	if err != nil || !bytes.Equal(data, bothNar) || hdr.GetTotalSize() != uint64(len(bothNar)) {
		t.Errorf("GetNar by store hash: %d bytes, %v", len(data), err)
	}
	_, _, err = getNar(ctx, l.client, &indexv1.GetNarRequest{
		Selector: &indexv1.GetNarRequest_StoreHash{StoreHash: hashOf(both.StorePath)}, ExpectedNarHash: both.NarHash.String(), Offset: 12345})
	wantCode(t, err, codes.OutOfRange, "compressed")
	// Gone from the host's store, the pushed path stays.
	l.daemon.Invalidate(t, both.StorePath)
	if _, err := l.client.GetPathInfo(ctx, &indexv1.GetPathInfoRequest{HashPart: hashOf(both.StorePath)}); err != nil {
		t.Errorf("pushed path after it left the host's store: %v", err)
	}
	// So does the dependency it had only as local: the cache took a copy
	// of it at publish, a NAR file of its own that the host's deletion
	// does not touch.
	l.daemon.Invalidate(t, dep.StorePath)
	resp, err = l.client.GetPathInfo(ctx, &indexv1.GetPathInfoRequest{HashPart: hashOf(dep.StorePath)})
	if err != nil {
		t.Fatalf("the local-only dependency after it left the host's store: %v", err)
	}
	copied := resp.GetInfo()
	if copied.GetFile().GetFileHash() == "" || copied.GetNarHash() != dep.NarHash.String() {
		t.Fatalf("the dependency's record %v: want the cache's copy, with a NAR file and NarHash %s", copied, dep.NarHash)
	}
	if sigs := copied.GetSignatures(); len(sigs) == 0 || !l.signer.Active.Public().Verify(l.fingerprint(copied, dep), sigs[len(sigs)-1]) {
		t.Errorf("signatures of the copy %q: want the cache key's, that verifies", sigs)
	}
	_, data, err = getNar(ctx, l.client, &indexv1.GetNarRequest{
		Selector: &indexv1.GetNarRequest_StoreHash{StoreHash: hashOf(dep.StorePath)}, ExpectedNarHash: dep.NarHash.String()})
	if err != nil || !bytes.Equal(data, depNar) {
		t.Errorf("GetNar of the copy: %d bytes, want %d; %v", len(data), len(depNar), err)
	}
}

// TestLocalPathUnsigned: with the signer down, a local path's narinfo is
// Unavailable (never served unsigned), its NAR is served, and it is signed
// once the signer is back.
func TestLocalPathUnsigned(t *testing.T) {
	l := startLocalIndex(t, 200*time.Millisecond)
	ctx := context.Background()
	p, pNar := l.buildTree(t, "p")
	l.signer.Hang.Store(true)
	_, err := l.client.GetPathInfo(ctx, &indexv1.GetPathInfoRequest{HashPart: hashOf(p.StorePath)})
	wantCode(t, err, codes.Unavailable, "not signed yet")
	_, data, err := getNar(ctx, l.client, &indexv1.GetNarRequest{Selector: &indexv1.GetNarRequest_StoreHash{StoreHash: hashOf(p.StorePath)}})
	if err != nil || !bytes.Equal(data, pNar) {
		t.Errorf("GetNar of an unsigned local path: %d bytes, %v", len(data), err)
	}
	l.signer.Hang.Store(false)
	resp, err := l.client.GetPathInfo(ctx, &indexv1.GetPathInfoRequest{HashPart: hashOf(p.StorePath)})
	if err != nil {
		t.Fatalf("GetPathInfo once the signer is back: %v", err)
	}
	if sigs := resp.GetInfo().GetSignatures(); len(sigs) != 1 || !l.signer.Active.Public().Verify(l.fingerprint(resp.GetInfo(), p), sigs[0]) {
		t.Errorf("signatures %q: want one by the cache key that verifies", sigs)
	}
}

func hashOf(storePath string) string { return filepath.Base(storePath)[:32] }

// TestPushedOverChangedHostPath: a host path a push refers to whose files
// no longer make the NAR the daemon described (cut, or changed in place)
// is not copied, and the push is refused: nothing unverified is
// published.
func TestPushedOverChangedHostPath(t *testing.T) {
	for _, tt := range []struct {
		name string
		data func(name string) []byte
	}{
		{"shorter", func(string) []byte { return []byte("changed") }},
		{"same size", func(name string) []byte { return bytes.Repeat([]byte("x"), len(name)*200000) }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			l := startLocalIndex(t, signTimeout)
			ctx := context.Background()
			dep, _ := l.buildTree(t, "dep")
			top, topNar := l.buildTree(t, "top")
			if _, err := l.client.GetPathInfo(ctx, &indexv1.GetPathInfoRequest{HashPart: hashOf(dep.StorePath)}); err != nil {
				t.Fatal(err)
			}
			// Changed behind the daemon's back.
			if err := os.WriteFile(filepath.Join(dep.StorePath, "data"), tt.data("dep"), 0o644); err != nil {
				t.Fatal(err)
			}
			file := mustPutNar(t, l.client, nartest.Compress(t, compression.XZ, topNar))
			_, err := l.client.PutPathInfo(ctx, &indexv1.PutPathInfoRequest{Info: &indexv1.PathInfo{
				StorePath: top.StorePath, NarHash: file.GetNarHash(), NarSize: file.GetNarSize(),
				References: []string{filepath.Base(dep.StorePath)},
				File:       &indexv1.NarFile{FileHash: file.GetFileHash()},
			}})
			wantCode(t, err, codes.FailedPrecondition, filepath.Base(dep.StorePath), "it changed or went")
			resp, err := l.client.GetPathInfo(ctx, &indexv1.GetPathInfoRequest{HashPart: hashOf(dep.StorePath)})
			if err != nil || resp.GetInfo().GetFile() != nil {
				t.Errorf("dep after the refused push: %v, %v; want it served from the host's store, not copied", resp.GetInfo(), err)
			}
			// top is a host path too: what is served must not be a pushed record.
			if resp, err := l.client.GetPathInfo(ctx, &indexv1.GetPathInfoRequest{HashPart: hashOf(top.StorePath)}); err == nil && resp.GetInfo().GetFile() != nil {
				t.Errorf("top was published over a reference that was not copied")
			}
		})
	}
}
