package localstore

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nixcache/nixcache/nix/daemon"
	"github.com/nixcache/nixcache/nix/nar"
	"github.com/nixcache/nixcache/nix/nixhash"
	"github.com/nixcache/nixcache/nix/signature"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/catalog"
	"github.com/nixcache/nixcache/services/index/internal/fakedaemon"
	"github.com/nixcache/nixcache/services/index/internal/fault"
)

// testSigner signs with one key, validating fingerprints as the signer
// does; while down it fails.
type testSigner struct {
	key      signature.SecretKey
	storeDir string
	down     atomic.Bool
	calls    atomic.Int64
	largest  atomic.Int64 // most fingerprints in one call
}

func (s *testSigner) Sign(ctx context.Context, fps []string) ([][]string, error) {
	s.calls.Add(1)
	if int64(len(fps)) > s.largest.Load() {
		s.largest.Store(int64(len(fps)))
	}
	if s.down.Load() {
		return nil, errors.New("connection refused")
	}
	out := make([][]string, len(fps))
	for i, fp := range fps {
		if _, err := signature.ParseFingerprint(s.storeDir, fp); err != nil {
			return nil, err
		}
		out[i] = []string{s.key.Sign(fp)}
	}
	return out, nil
}

// env is a Store over a fake daemon, a test signer and a fresh catalogue.
type env struct {
	store  *Store
	daemon *fakedaemon.Daemon
	signer *testSigner
	cat    *catalog.Catalog
	nixDB  string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	dir := t.TempDir()
	storeDir := filepath.Join(dir, "nix", "store")
	d := fakedaemon.New(t, storeDir)
	key, err := signature.Generate("test-cache-1")
	if err != nil {
		t.Fatal(err)
	}
	sg := &testSigner{key: key, storeDir: storeDir}
	cat, err := catalog.Open(filepath.Join(dir, "catalog.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cat.Close() })
	nixDB := filepath.Join(dir, "db.sqlite")
	if err := os.WriteFile(nixDB, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	s := New(Config{
		StoreDir:     storeDir,
		NixDB:        nixDB,
		SyncInterval: 10 * time.Millisecond,
		SignTimeout:  time.Second,
		Log:          slog.New(slog.NewTextHandler(io.Discard, nil)),
	}, cat, d, sg)
	return &env{store: s, daemon: d, signer: sg, cat: cat, nixDB: nixDB}
}

func hashOf(p string) string { return filepath.Base(p)[:32] }

// catalogued returns the local record of p, or nil.
func (e *env) catalogued(t *testing.T, p string) (*indexv1.PathInfo, bool) {
	t.Helper()
	info, signed, err := e.cat.LocalPathInfo(hashOf(p))
	if errors.Is(err, fault.ErrNotFound) {
		return nil, false
	}
	if err != nil {
		t.Fatal(err)
	}
	return info, signed
}

// assertSigned checks that info is di's, with a valid signature by the
// cache's key first and Nix's signatures after it.
func (e *env) assertSigned(t *testing.T, info *indexv1.PathInfo, di *daemon.PathInfo) {
	t.Helper()
	if info.GetStorePath() != di.StorePath || info.GetNarHash() != di.NarHash.String() || info.GetNarSize() != di.NarSize {
		t.Errorf("catalogued %v, want the daemon's %+v", info, di)
	}
	if info.GetFile() != nil || info.GetUrl() != "" {
		t.Errorf("local path %s has a file or URL: %v", di.StorePath, info)
	}
	var refs []string
	for _, r := range di.References {
		refs = append(refs, filepath.Base(r))
	}
	slices.Sort(refs)
	if !slices.Equal(info.GetReferences(), refs) {
		t.Errorf("references %q, want %q", info.GetReferences(), refs)
	}
	if di.Deriver != "" && info.GetDeriver() != filepath.Base(di.Deriver) {
		t.Errorf("deriver %q, want %q", info.GetDeriver(), filepath.Base(di.Deriver))
	}
	sigs := info.GetSignatures()
	fp := signature.Fingerprint(e.store.cfg.StoreDir, info.GetStorePath(), di.NarHash, di.NarSize, info.GetReferences())
	if len(sigs) != 1+len(di.Sigs) || !e.signer.key.Public().Verify(fp, sigs[0]) {
		t.Errorf("signatures %q: want one by the cache key that verifies, then %q", sigs, di.Sigs)
	}
	if !slices.Equal(sigs[1:], di.Sigs) {
		t.Errorf("signatures %q: want Nix's %q kept after ours", sigs, di.Sigs)
	}
}

func TestSync(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	leaf := e.daemon.Build(t, "leaf", nil, fakedaemon.File("leaf"))
	leaf.Sigs = []string{"cache.nixos.org-1:AAAA"}
	e.daemon.Register(leaf)
	mid := e.daemon.Build(t, "mid", []string{leaf.StorePath}, fakedaemon.File("mid"))
	top := e.daemon.Build(t, "top", nil, func(p string) {
		os.Mkdir(p, 0o755)
		os.WriteFile(p+"/self", []byte(p), 0o644)
	})
	top.References = []string{leaf.StorePath, mid.StorePath, top.StorePath}
	e.daemon.Register(top)

	res, err := e.store.Sync(ctx)
	if err != nil {
		t.Fatalf("Sync: %v", err)
	}
	if want := (SyncResult{Valid: 3, Added: 3}); res != want {
		t.Errorf("first Sync: %+v, want %+v", res, want)
	}
	for _, di := range []*daemon.PathInfo{leaf, mid, top} {
		info, signed := e.catalogued(t, di.StorePath)
		if info == nil || !signed {
			t.Fatalf("%s: catalogued %v, signed %v; want it signed", di.StorePath, info, signed)
		}
		e.assertSigned(t, info, di)
	}
	if got := e.signer.calls.Load(); got != 1 {
		t.Errorf("%d Sign calls for 3 new paths, want 1 batch", got)
	}

	// A pushed path with the hash part of a local one that goes away: the
	// sync must leave it alone.
	pushed := &indexv1.PathInfo{StorePath: mid.StorePath, NarHash: mid.NarHash.String(), NarSize: mid.NarSize,
		File: &indexv1.NarFile{FileHash: "sha256:" + strings.Repeat("0", 52), Compression: "xz"}}
	if _, err := e.cat.AddNarFile(strings.Repeat("0", 52), pushed.GetFile()); err != nil {
		t.Fatal(err)
	}
	if _, err := e.cat.UpdatePathInfo(hashOf(mid.StorePath), func(*indexv1.PathInfo) (*indexv1.PathInfo, error) { return pushed, nil }); err != nil {
		t.Fatal(err)
	}
	e.daemon.Invalidate(t, top.StorePath)
	e.daemon.Invalidate(t, mid.StorePath)
	added := e.daemon.Build(t, "added", nil, fakedaemon.File("new"))
	res, err = e.store.Sync(ctx)
	if err != nil {
		t.Fatalf("Sync: %v", err)
	}
	if want := (SyncResult{Valid: 2, Added: 1, Removed: 2}); res != want {
		t.Errorf("second Sync: %+v, want %+v", res, want)
	}
	for p, want := range map[string]bool{leaf.StorePath: true, added.StorePath: true, mid.StorePath: false, top.StorePath: false} {
		if info, _ := e.catalogued(t, p); (info != nil) != want {
			t.Errorf("%s catalogued: %v, want %v", p, info != nil, want)
		}
	}
	if got, err := e.cat.PathInfo(hashOf(mid.StorePath)); err != nil || got.GetFile() == nil {
		t.Errorf("the pushed record of %s after the sync: %v, %v; want it kept", mid.StorePath, got, err)
	}

	// Nothing changed: nothing to do, nothing signed.
	calls := e.signer.calls.Load()
	if res, err := e.store.Sync(ctx); err != nil || res != (SyncResult{Valid: 2}) {
		t.Errorf("idle Sync: %+v, %v", res, err)
	}
	if e.signer.calls.Load() != calls {
		t.Errorf("idle Sync called the signer")
	}

	e.daemon.Down.Store(true)
	if _, err := e.store.Sync(ctx); !errors.Is(err, fakedaemon.ErrDown) {
		t.Errorf("Sync with the daemon down: %v, want its error", err)
	}
	if info, _ := e.catalogued(t, leaf.StorePath); info == nil {
		t.Errorf("a failed sync dropped %s", leaf.StorePath)
	}
}

// TestSyncBatches: many new paths are queried and signed in batches of at
// most signBatch.
func TestSyncBatches(t *testing.T) {
	e := newEnv(t)
	n := signBatch + signBatch/2
	for range n {
		p := e.daemon.NewPath("p")
		e.daemon.Register(&daemon.PathInfo{StorePath: p, NarHash: nixhash.Hash{Algo: nixhash.SHA256, Digest: make([]byte, 32)}, NarSize: 1})
	}
	res, err := e.store.Sync(context.Background())
	if err != nil || res.Added != n {
		t.Fatalf("Sync: %+v, %v; want %d added", res, err, n)
	}
	if got := e.signer.calls.Load(); got != 2 || e.signer.largest.Load() > signBatch {
		t.Errorf("%d Sign calls, the largest of %d fingerprints; want 2 of at most %d", got, e.signer.largest.Load(), signBatch)
	}
}

// staleDaemon lists the valid paths as they were before a path was added.
type staleDaemon struct {
	*fakedaemon.Daemon
	list []string
}

func (d staleDaemon) QueryAllValidPaths(context.Context) ([]string, error) { return d.list, nil }

// TestSyncKeepsPathsAddedMeanwhile: a path a lookup catalogued after the
// sync listed the valid paths is not dropped, and a path the daemon lists
// but no longer has is not added.
func TestSyncKeepsPathsAddedMeanwhile(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	old := e.daemon.Build(t, "old", nil, fakedaemon.File("old"))
	gone := e.daemon.Build(t, "gone", nil, fakedaemon.File("gone"))
	list, _ := e.daemon.QueryAllValidPaths(ctx)
	e.daemon.Invalidate(t, gone.StorePath)

	fresh := e.daemon.Build(t, "fresh", nil, fakedaemon.File("fresh"))
	if _, err := e.store.PathInfo(ctx, hashOf(fresh.StorePath)); err != nil {
		t.Fatalf("PathInfo of a new path: %v", err)
	}
	e.store.daemon = staleDaemon{e.daemon, list}
	res, err := e.store.Sync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := (SyncResult{Valid: 2, Added: 1}); res != want {
		t.Errorf("Sync: %+v, want %+v", res, want)
	}
	for p, want := range map[string]bool{old.StorePath: true, fresh.StorePath: true, gone.StorePath: false} {
		if info, _ := e.catalogued(t, p); (info != nil) != want {
			t.Errorf("%s catalogued: %v, want %v", p, info != nil, want)
		}
	}
}

func TestLookupOnMiss(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	p := e.daemon.Build(t, "built-later", nil, fakedaemon.File("x"))

	info, err := e.store.PathInfo(ctx, hashOf(p.StorePath))
	if err != nil {
		t.Fatalf("PathInfo of a path the daemon has: %v", err)
	}
	e.assertSigned(t, info, p)
	if got, signed := e.catalogued(t, p.StorePath); got == nil || !signed {
		t.Errorf("the path found by lookup is not catalogued signed")
	}
	calls := e.daemon.Calls("QueryPathFromHashPart")
	if _, err := e.store.PathInfo(ctx, hashOf(p.StorePath)); err != nil {
		t.Fatal(err)
	}
	if e.daemon.Calls("QueryPathFromHashPart") != calls {
		t.Errorf("a catalogued path was looked up in the daemon again")
	}

	unknown := hashOf(e.daemon.NewPath("never"))
	if _, err := e.store.PathInfo(ctx, unknown); !errors.Is(err, fault.ErrNotFound) {
		t.Errorf("PathInfo of an unknown path: %v, want ErrNotFound", err)
	}
	// With the daemon away, the catalogue answers: a 404, not a failure.
	e.daemon.Down.Store(true)
	if _, err := e.store.PathInfo(ctx, unknown); !errors.Is(err, fault.ErrNotFound) {
		t.Errorf("PathInfo with the daemon down: %v, want ErrNotFound", err)
	}
	if _, err := e.store.PathInfo(ctx, hashOf(p.StorePath)); err != nil {
		t.Errorf("PathInfo of a catalogued path with the daemon down: %v", err)
	}
}

func TestPresent(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	a := e.daemon.Build(t, "a", nil, fakedaemon.File("a"))
	if _, err := e.store.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	b := e.daemon.Build(t, "b", nil, fakedaemon.File("b")) // not synced: found by lookup
	none := hashOf(e.daemon.NewPath("none"))
	got, err := e.store.Present(ctx, []string{none, hashOf(b.StorePath), hashOf(a.StorePath), hashOf(b.StorePath)})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{hashOf(b.StorePath), hashOf(a.StorePath)}; !slices.Equal(got, want) {
		t.Errorf("Present: %q, want %q", got, want)
	}
}

// TestSignerDown: paths catalogued while the signer is down are recorded
// unsigned, never served unsigned, and signed when it is back: on request
// or in the background.
func TestSignerDown(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.signer.down.Store(true)
	synced := e.daemon.Build(t, "synced", nil, fakedaemon.File("s"))
	other := e.daemon.Build(t, "other", nil, fakedaemon.File("o"))
	res, err := e.store.Sync(ctx)
	if err != nil {
		t.Fatalf("Sync with the signer down: %v", err)
	}
	if res.Added != 2 || res.Unsigned != 2 {
		t.Errorf("Sync: %+v, want 2 added unsigned", res)
	}
	looked := e.daemon.Build(t, "looked-up", nil, fakedaemon.File("l"))
	for _, di := range []*daemon.PathInfo{synced, looked} {
		if _, err := e.store.PathInfo(ctx, hashOf(di.StorePath)); !errors.Is(err, fault.ErrUnavailable) {
			t.Errorf("PathInfo of unsigned %s: %v, want ErrUnavailable", di.StorePath, err)
		}
		// Its NAR can be served: it is the narinfo that needs our signature.
		if info, err := e.store.Find(ctx, hashOf(di.StorePath)); err != nil || info.GetStorePath() != di.StorePath {
			t.Errorf("Find of unsigned %s: %v, %v", di.StorePath, info, err)
		}
	}
	if info, signed := e.catalogued(t, looked.StorePath); info == nil || signed {
		t.Errorf("a path looked up while the signer is down: catalogued %v, signed %v; want it unsigned", info != nil, signed)
	}
	if n, err := e.store.SignPending(ctx); err == nil || n != 0 {
		t.Errorf("SignPending with the signer down: %d, %v; want an error", n, err)
	}

	e.signer.down.Store(false)
	info, err := e.store.PathInfo(ctx, hashOf(synced.StorePath))
	if err != nil {
		t.Fatalf("PathInfo once the signer is back: %v", err)
	}
	e.assertSigned(t, info, synced)
	if _, signed := e.catalogued(t, synced.StorePath); !signed {
		t.Errorf("signature made on request not recorded")
	}
	if n, err := e.store.SignPending(ctx); err != nil || n != 2 {
		t.Errorf("SignPending: %d, %v; want the 2 other paths signed", n, err)
	}
	for _, di := range []*daemon.PathInfo{other, looked} {
		info, signed := e.catalogued(t, di.StorePath)
		if !signed {
			t.Fatalf("%s still unsigned", di.StorePath)
		}
		e.assertSigned(t, info, di)
	}
}

// TestPoll: the poll syncs when the store directory or the database
// changes, twice after a change too recent to trust, and every
// fullResyncInterval; otherwise not.
func TestPoll(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	past := time.Now().Add(-time.Hour)
	for _, p := range []string{e.store.cfg.StoreDir, e.nixDB} {
		if err := os.Chtimes(p, past, past); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now()
	e.store.now = func() time.Time { return now }
	syncs := func() int { return e.daemon.Calls("QueryAllValidPaths") }
	var w watch

	steps := []struct {
		name    string
		advance time.Duration
		change  func()
		want    int // syncs after the step
	}{
		{"first poll", 0, nil, 1},
		{"nothing changed", time.Second, nil, 1},
		{"database written", time.Second, func() { touch(t, e.nixDB, past.Add(time.Minute)) }, 2},
		{"nothing changed", time.Second, nil, 2},
		{"WAL appears", time.Second, func() { os.WriteFile(e.nixDB+"-wal", []byte("x"), 0o644); touch(t, e.nixDB+"-wal", past) }, 3},
		{"WAL grows, same mtime", time.Second, func() { os.WriteFile(e.nixDB+"-wal", []byte("xy"), 0o644); touch(t, e.nixDB+"-wal", past) }, 4},
		{"store directory changes", time.Second, func() { touch(t, e.store.cfg.StoreDir, past.Add(2*time.Minute)) }, 5},
		// A change stamped just now: synced, and once more.
		{"recent change", time.Second, func() { touch(t, e.nixDB, now) }, 6},
		{"just after a recent change", 100 * time.Millisecond, nil, 7},
		{"two seconds after a recent change", 2 * time.Second, nil, 8},
		{"settled", time.Second, nil, 8},
		{"ten minutes on", fullResyncInterval, nil, 9},
		{"nothing changed", time.Second, nil, 9},
	}
	for _, st := range steps {
		now = now.Add(st.advance)
		if st.change != nil {
			st.change()
		}
		e.store.poll(ctx, &w)
		if got := syncs(); got != st.want {
			t.Fatalf("%s: %d syncs so far, want %d", st.name, got, st.want)
		}
	}

	// A failed sync is retried on the next poll, though nothing changed.
	e.daemon.Down.Store(true)
	touch(t, e.nixDB, past.Add(3*time.Minute))
	now = now.Add(time.Second)
	e.store.poll(ctx, &w)
	e.daemon.Down.Store(false)
	now = now.Add(time.Second)
	e.store.poll(ctx, &w)
	if got := syncs(); got != 11 {
		t.Errorf("%d syncs, want 11: a failed one and its retry", got)
	}
}

func touch(t *testing.T, p string, mtime time.Time) {
	t.Helper()
	if err := os.Chtimes(p, mtime, mtime); err != nil {
		t.Fatal(err)
	}
}

// TestRun: paths built and deleted while Run runs are catalogued and
// dropped without any lookup, and paths recorded unsigned are signed in
// the background once the signer is back.
func TestRun(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.store.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.After(5 * time.Second)
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for !cond() {
			select {
			case <-deadline:
				t.Fatalf("%s: not within 5s", what)
			case <-tick.C:
			}
		}
	}
	changeDB := func() {
		f, err := os.OpenFile(e.nixDB, os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.Write([]byte("x"))
		f.Close()
	}
	p := e.daemon.Build(t, "built", nil, fakedaemon.File("b"))
	changeDB()
	waitFor("new path catalogued", func() bool { _, signed := e.catalogued(t, p.StorePath); return signed })

	e.daemon.Invalidate(t, p.StorePath)
	changeDB()
	waitFor("deleted path dropped", func() bool { info, _ := e.catalogued(t, p.StorePath); return info == nil })

	e.signer.down.Store(true)
	q := e.daemon.Build(t, "while-signer-down", nil, fakedaemon.File("q"))
	changeDB()
	waitFor("path catalogued unsigned", func() bool { info, _ := e.catalogued(t, q.StorePath); return info != nil })
	e.signer.down.Store(false)
	waitFor("path signed in the background", func() bool { _, signed := e.catalogued(t, q.StorePath); return signed })
	if e.daemon.Calls("QueryPathFromHashPart") != 0 {
		t.Errorf("the daemon was asked for lookups: Run should need none")
	}
}

func TestOpenNar(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	tree := e.daemon.Build(t, "tree", nil, func(p string) {
		os.MkdirAll(p+"/bin", 0o755)
		os.MkdirAll(p+"/empty", 0o755)
		os.WriteFile(p+"/bin/run", []byte("#!/bin/sh\n"), 0o755)
		os.WriteFile(p+"/data", bytes.Repeat([]byte("0123456789"), 50000), 0o644)
		os.Symlink("data", p+"/link")
	})
	info, err := e.store.Find(ctx, hashOf(tree.StorePath))
	if err != nil {
		t.Fatal(err)
	}
	var want bytes.Buffer
	if err := nar.DumpPath(&want, tree.StorePath); err != nil {
		t.Fatal(err)
	}
	size := uint64(want.Len())
	tests := []struct {
		offset, length uint64
	}{
		{0, 0}, {0, size}, {1, 0}, {100, 1}, {1000, 300000}, {size - 1, 0}, {size - 10, 100}, {0, 1},
	}
	for _, tt := range tests {
		rg, err := e.store.OpenNar(ctx, info, tt.offset, tt.length)
		if err != nil {
			t.Fatalf("OpenNar(%d, %d): %v", tt.offset, tt.length, err)
		}
		got, err := io.ReadAll(rg)
		rg.Close()
		end := size
		if tt.length > 0 {
			end = min(size, tt.offset+tt.length)
		}
		if err != nil || !bytes.Equal(got, want.Bytes()[tt.offset:end]) {
			t.Errorf("OpenNar(%d, %d): %d bytes, %v; want bytes %d to %d of nar.DumpPath", tt.offset, tt.length, len(got), err, tt.offset, end)
		}
		if rg.Total != size || rg.Length != end-tt.offset || rg.Compression != "none" {
			t.Errorf("OpenNar(%d, %d): total %d, length %d, compression %s", tt.offset, tt.length, rg.Total, rg.Length, rg.Compression)
		}
	}
	if _, err := e.store.OpenNar(ctx, info, size, 0); !errors.Is(err, fault.ErrOutOfRange) {
		t.Errorf("OpenNar at the end: %v, want ErrOutOfRange", err)
	}

	// The tree changed on disk (it never should): longer or shorter than
	// registered is an error, not a wrong NAR passed off as right.
	os.WriteFile(tree.StorePath+"/zz", []byte("more"), 0o644)
	if _, err := readRange(e, ctx, info, 0); err == nil || !strings.Contains(err.Error(), "longer than its registered size") {
		t.Errorf("NAR of a grown tree: %v, want an error", err)
	}
	os.Remove(tree.StorePath + "/zz")
	os.Remove(tree.StorePath + "/data")
	if _, err := readRange(e, ctx, info, 0); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("NAR of a shrunk tree: %v, want io.ErrUnexpectedEOF", err)
	}

	e.daemon.Invalidate(t, tree.StorePath)
	if _, err := e.store.OpenNar(ctx, info, 0, 0); !errors.Is(err, fault.ErrNotFound) {
		t.Errorf("OpenNar of a deleted path: %v, want ErrNotFound", err)
	}
}

func readRange(e *env, ctx context.Context, info *indexv1.PathInfo, offset uint64) ([]byte, error) {
	rg, err := e.store.OpenNar(ctx, info, offset, 0)
	if err != nil {
		return nil, err
	}
	defer rg.Close()
	return io.ReadAll(rg)
}
