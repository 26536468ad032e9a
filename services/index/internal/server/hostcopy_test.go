package server_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/nixcache/nixcache/nix/compression"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/catalog"
	"github.com/nixcache/nixcache/services/index/internal/fakedaemon"
	"github.com/nixcache/nixcache/services/index/internal/fakesigner"
	"github.com/nixcache/nixcache/services/index/internal/hostnar"
	"github.com/nixcache/nixcache/services/index/internal/localstore"
	"github.com/nixcache/nixcache/services/index/internal/server"
	"github.com/nixcache/nixcache/services/index/internal/signerclient"
)

// startCopyingIndex is startLocalIndex with compressed copies of the host
// paths' NARs (package hostnar), their worker running.
func startCopyingIndex(t *testing.T) *localIndex {
	t.Helper()
	dir := t.TempDir()
	storeDir := filepath.Join(dir, "nix", "store")
	d := fakedaemon.New(t, storeDir)
	fake := fakesigner.New(t, storeDir)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	var copies *hostnar.Store
	newLocal := func(cat *catalog.Catalog, signer *signerclient.Client) server.LocalStore {
		var err error
		copies, _, err = hostnar.Open(hostnar.Config{Dir: filepath.Join(dir, "nars", "host"), StoreDir: storeDir, MaxBytes: 1 << 30, Log: log}, cat)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); copies.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
		return localstore.New(localstore.Config{StoreDir: storeDir, NixDB: filepath.Join(dir, "db.sqlite"),
			SyncInterval: time.Second, SignTimeout: signTimeout, Log: log}, cat, d, signer).WithCopies(copies)
	}
	idx := startIndexWith(t, dir, signerConn{fake: fake}, localSetup{storeDir: storeDir, newLocal: newLocal,
		copies: func() server.HostCopies { return copies }})
	return &localIndex{index: idx, daemon: d, signer: fake, storeDir: storeDir}
}

// waitCopy polls GetPathInfo until the path's narinfo names a copy.
func waitCopy(t *testing.T, c indexv1.IndexServiceClient, hash string) *indexv1.PathInfo {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		resp, err := c.GetPathInfo(context.Background(), &indexv1.GetPathInfoRequest{HashPart: hash})
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetInfo().GetFile() != nil {
			return resp.GetInfo()
		}
		if time.Now().After(deadline) {
			t.Fatalf("no copy of %s named after 10s: %v", hash, resp.GetInfo())
		}
	}
}

// TestHostCopies: a host path's first download (GetNar by store hash, or
// a gateway's report of a dump) makes a copy that its info then names;
// StatNar names the copy's file under nars/ and GetNar serves it by file
// hash; the uncompressed NAR is still served by store hash.
func TestHostCopies(t *testing.T) {
	l := startCopyingIndex(t)
	ctx := context.Background()
	leaf, leafNar := l.buildTree(t, "leaf")
	top, topNar := l.buildTree(t, "top", leaf.StorePath)
	hash := hashOf(leaf.StorePath)

	resp, err := l.client.GetPathInfo(ctx, &indexv1.GetPathInfoRequest{HashPart: hash})
	if err != nil {
		t.Fatal(err)
	}
	if info := resp.GetInfo(); info.GetFile() != nil || !info.GetHostStore() || info.GetUrl() != "" {
		t.Errorf("before any download: %v, want a host path without a file", info)
	}
	if _, _, err := getNar(ctx, l.client, &indexv1.GetNarRequest{Selector: &indexv1.GetNarRequest_StoreHash{StoreHash: hash}}); err != nil {
		t.Fatal(err)
	}
	info := waitCopy(t, l.client, hash)
	nf := info.GetFile()
	if !info.GetHostStore() || nf.GetCompression() != compression.Zstd || nf.GetNarHash() != leaf.NarHash.String() ||
		info.GetUrl() != "nar/"+strings.TrimPrefix(nf.GetFileHash(), "sha256:")+".nar.zst" {
		t.Errorf("info naming the copy: %v", info)
	}

	st, err := l.client.StatNar(ctx, &indexv1.StatNarRequest{FileHash: nf.GetFileHash()})
	if err != nil {
		t.Fatal(err)
	}
	wantRel := "host/" + strings.TrimPrefix(nf.GetFileHash(), "sha256:")[:2] + "/" + strings.TrimPrefix(nf.GetFileHash(), "sha256:") + ".nar.zst"
	if st.GetRelativePath() != wantRel || st.GetFile().GetFileSize() != nf.GetFileSize() {
		t.Errorf("StatNar of the copy: %v, want it named %s", st, wantRel)
	}
	hdr, data, err := getNar(ctx, l.client, &indexv1.GetNarRequest{Selector: &indexv1.GetNarRequest_FileHash{FileHash: nf.GetFileHash()}})
	if err != nil {
		t.Fatal(err)
	}
	if hdr.GetCompression() != compression.Zstd || hdr.GetTotalSize() != nf.GetFileSize() || uint64(len(data)) != nf.GetFileSize() {
		t.Errorf("GetNar of the copy: %v, %d bytes", hdr, len(data))
	}
	dec, err := compression.NewReader(compression.Zstd, bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	plain, err := io.ReadAll(dec)
	if err != nil || !bytes.Equal(plain, leafNar) {
		t.Errorf("the copy decompresses to %d bytes (%v), not the %d-byte NAR", len(plain), err, len(leafNar))
	}
	_, _, err = getNar(ctx, l.client, &indexv1.GetNarRequest{Selector: &indexv1.GetNarRequest_FileHash{FileHash: nf.GetFileHash()},
		ExpectedNarHash: top.NarHash.String()})
	wantCode(t, err, codes.NotFound)
	// The URL of the narinfo before the copy.
	hdr, data, err = getNar(ctx, l.client, &indexv1.GetNarRequest{Selector: &indexv1.GetNarRequest_StoreHash{StoreHash: hash},
		ExpectedNarHash: leaf.NarHash.String()})
	if err != nil || hdr.GetCompression() != compression.None || !bytes.Equal(data, leafNar) {
		t.Errorf("GetNar by store hash of a path with a copy: %v, %d bytes, %v; want the uncompressed NAR", hdr, len(data), err)
	}

	// A gateway looked top up, dumped it itself and reports it.
	if _, err := l.client.GetPathInfo(ctx, &indexv1.GetPathInfoRequest{HashPart: hashOf(top.StorePath)}); err != nil {
		t.Fatal(err)
	}
	if _, err := l.client.RecordDownloads(ctx, &indexv1.RecordDownloadsRequest{Downloads: []*indexv1.NarDownloads{
		{StoreHash: hashOf(top.StorePath), Count: 1, Bytes: uint64(len(topNar))},
	}}); err != nil {
		t.Fatal(err)
	}
	waitCopy(t, l.client, hashOf(top.StorePath))
}
