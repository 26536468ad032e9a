package hostnar

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/nixcache/nixcache/nix/compression"
	"github.com/nixcache/nixcache/nix/nardump"
	"github.com/nixcache/nixcache/nix/nixhash"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/catalog"
	"github.com/nixcache/nixcache/services/index/internal/fault"
	"github.com/nixcache/nixcache/services/index/internal/narstore"
)

// env is a catalogue, a store directory and the copies' directory.
type env struct {
	t        *testing.T
	cat      *catalog.Catalog
	storeDir string
	dir      string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	root := t.TempDir()
	cat, err := catalog.Open(filepath.Join(root, "catalog.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cat.Close() })
	e := &env{t: t, cat: cat, storeDir: filepath.Join(root, "store"), dir: filepath.Join(root, "nars", "host")}
	if err := os.MkdirAll(e.storeDir, 0o755); err != nil {
		t.Fatal(err)
	}
	return e
}

// addPath makes a host path holding size bytes (random when random is
// set, else compressible), records it in the catalogue with its real NAR
// hash, and returns its hash part.
func (e *env) addPath(hashChar string, size int, random bool) string {
	e.t.Helper()
	data := bytes.Repeat([]byte("nixcache "), size/9+1)[:size]
	if random {
		rand.Read(data)
	}
	return e.addPathData(hashChar, data)
}

// addPathData is addPath with the path's content.
func (e *env) addPathData(hashChar string, data []byte) string {
	e.t.Helper()
	hash := strings.Repeat(hashChar, 32)
	sp := filepath.Join(e.storeDir, hash+"-p")
	if err := os.WriteFile(sp, data, 0o644); err != nil {
		e.t.Fatal(err)
	}
	h, n := narHash(e.t, sp)
	info := &indexv1.PathInfo{StorePath: sp, NarHash: h.String(), NarSize: n}
	if err := e.cat.PutLocal([]catalog.LocalPath{{Info: info, Signed: true}}); err != nil {
		e.t.Fatal(err)
	}
	return hash
}

func narHash(t *testing.T, p string) (nixhash.Hash, uint64) {
	t.Helper()
	r, err := nardump.Open(p, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	h := sha256.New()
	n, err := io.Copy(h, r)
	if err != nil {
		t.Fatal(err)
	}
	return nixhash.Hash{Algo: nixhash.SHA256, Digest: h.Sum(nil)}, uint64(n)
}

// open opens the copies with this budget and runs their worker until the
// test ends.
func (e *env) open(budget uint64) (*Store, StartReport) {
	e.t.Helper()
	s, rep, _ := e.openWith(Config{MaxBytes: budget})
	return s, rep
}

// settle waits until s has nothing queued.
func settle(t *testing.T, s *Store) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); s.Pending() > 0; time.Sleep(2 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d copies still pending after 20s", s.Pending())
		}
	}
}

// copyOf returns the copy the catalogue names for the path, nil if none.
func (e *env) copyOf(hash string) *indexv1.NarFile {
	e.t.Helper()
	info, _, err := e.cat.LocalPathInfo(hash)
	if err != nil {
		e.t.Fatal(err)
	}
	if !info.GetHostStore() {
		e.t.Errorf("local path %s is not marked host_store", hash)
	}
	return info.GetFile()
}

func TestCopyMadeVerifiedAndNamed(t *testing.T) {
	e := newEnv(t)
	h := e.addPath("a", 1<<20, false)
	s, _ := e.open(1 << 30)
	s.Requested(h)
	settle(t, s)

	nf := e.copyOf(h)
	if nf == nil {
		t.Fatalf("no copy recorded: stats %+v", s.Stats())
	}
	info, _, _ := e.cat.LocalPathInfo(h)
	if nf.GetCompression() != compression.Zstd || nf.GetNarHash() != info.GetNarHash() || nf.GetNarSize() != info.GetNarSize() {
		t.Errorf("copy record %v does not match the path %v", nf, info)
	}
	if fh, _ := nixhash.Parse(nf.GetFileHash()); info.GetUrl() != "nar/"+fh.NixBase32()+".nar.zst" {
		t.Errorf("narinfo URL %q does not name the copy %s", info.GetUrl(), nf.GetFileHash())
	}
	rel, err := s.RelativePath(nf)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(filepath.Dir(e.dir), filepath.FromSlash(rel)))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	if got := (nixhash.Hash{Algo: nixhash.SHA256, Digest: sum[:]}); got.String() != nf.GetFileHash() || uint64(len(data)) != nf.GetFileSize() {
		t.Errorf("file on disk: %s, %d bytes; recorded %s, %d", got, len(data), nf.GetFileHash(), nf.GetFileSize())
	}
	dec, err := compression.NewReader(compression.Zstd, bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	nh := sha256.New()
	n, err := io.Copy(nh, dec)
	if err != nil || uint64(n) != info.GetNarSize() {
		t.Fatalf("decompressed %d bytes (%v), want %d", n, err, info.GetNarSize())
	}
	if got := (nixhash.Hash{Algo: nixhash.SHA256, Digest: nh.Sum(nil)}); got.String() != info.GetNarHash() {
		t.Errorf("the copy decompresses to NAR %s, the path's is %s", got, info.GetNarHash())
	}
	if u := s.Usage(); u.Files != 1 || u.Bytes != nf.GetFileSize() {
		t.Errorf("usage %+v, want 1 file of %d bytes", u, nf.GetFileSize())
	}

	// Found by file hash, and read whole or in part.
	hn, err := e.cat.HostNarByFile(strings.TrimPrefix(nf.GetFileHash(), "sha256:"))
	if err != nil || hn.HashPart != h {
		t.Fatalf("HostNarByFile: %v, %v", hn, err)
	}
	rg, err := s.Open(context.Background(), nf, 10, 100)
	if err != nil {
		t.Fatal(err)
	}
	part, err := io.ReadAll(rg)
	rg.Close()
	if err != nil || !bytes.Equal(part, data[10:110]) {
		t.Errorf("range 10+100 of the copy: %d bytes, %v", len(part), err)
	}
}

func TestCopyOfChangedPathRefused(t *testing.T) {
	e := newEnv(t)
	h := e.addPath("b", 4096, false)
	// The files change after the daemon registered the NAR hash.
	if err := os.WriteFile(filepath.Join(e.storeDir, h+"-p"), bytes.Repeat([]byte("x"), 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	s, _ := e.open(1 << 30)
	s.Requested(h)
	settle(t, s)
	if nf := e.copyOf(h); nf != nil {
		t.Errorf("a copy of a changed path was recorded: %v", nf)
	}
	if st := s.Stats(); st.Skipped != 1 || st.Made != 0 {
		t.Errorf("stats %+v, want one skipped", st)
	}
	if u := s.Usage(); u.Files != 0 {
		t.Errorf("usage %+v, want none", u)
	}
	entries, _ := os.ReadDir(filepath.Join(e.dir, "tmp"))
	if len(entries) != 0 {
		t.Errorf("files left in tmp/: %v", entries)
	}
}

func TestCheckRefusesDamagedFile(t *testing.T) {
	e := newEnv(t)
	h := e.addPath("c", 64<<10, true)
	info, _, _ := e.cat.LocalPathInfo(h)
	s, _, err := Open(Config{Dir: e.dir, StoreDir: e.storeDir, MaxBytes: 1 << 30, Log: slog.New(slog.DiscardHandler)}, e.cat)
	if err != nil {
		t.Fatal(err)
	}
	tmp, nf, why, err := s.compress(context.Background(), info.GetStorePath(), info)
	if err != nil || why != "" {
		t.Fatalf("compress: %q, %v", why, err)
	}
	want, _ := nixhash.Parse(info.GetNarHash())
	ws, err := s.workspace()
	if err != nil {
		t.Fatal(err)
	}
	for name, damage := range map[string]func(f *os.File) error{
		// Every bit of the byte inverted: writing a fixed value would leave
		// the file as it was when the byte already had that value.
		"a byte flipped": func(f *os.File) error {
			b := make([]byte, 1)
			if _, err := f.ReadAt(b, int64(nf.GetFileSize()/2)); err != nil {
				return err
			}
			_, err := f.WriteAt([]byte{^b[0]}, int64(nf.GetFileSize()/2))
			return err
		},
		"cut short":   func(f *os.File) error { return f.Truncate(int64(nf.GetFileSize() - 1)) },
		"a byte more": func(f *os.File) error { _, err := f.WriteAt([]byte{0}, int64(nf.GetFileSize())); return err },
		// Decompresses to the same NAR: only the file hash tells.
		"a skippable frame more": func(f *os.File) error {
			_, err := f.WriteAt([]byte{0x50, 0x2a, 0x4d, 0x18, 1, 0, 0, 0, 'x'}, int64(nf.GetFileSize()))
			return err
		},
	} {
		data, err := os.ReadFile(tmp)
		if err != nil {
			t.Fatal(err)
		}
		damaged := filepath.Join(t.TempDir(), "f")
		if err := os.WriteFile(damaged, data, 0o600); err != nil {
			t.Fatal(err)
		}
		f, err := os.OpenFile(damaged, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := damage(f); err != nil {
			t.Fatal(err)
		}
		if err := ws.check(context.Background(), f, nf, want); err == nil {
			t.Errorf("%s: check passed a damaged copy", name)
		}
		f.Close()
	}
	f, _ := os.Open(tmp)
	defer f.Close()
	if err := ws.check(context.Background(), f, nf, want); err != nil {
		t.Errorf("check of the undamaged copy: %v", err)
	}
}

func TestEvictionLeastRecentlyUsed(t *testing.T) {
	e := newEnv(t)
	// Random bytes: each copy is about 64 KiB; the budget holds two.
	a, b, c := e.addPath("d", 64<<10, true), e.addPath("f", 64<<10, true), e.addPath("g", 64<<10, true)
	const budget = 150 << 10
	s, _ := e.open(budget)
	s.Requested(a)
	settle(t, s)
	s.Requested(b)
	settle(t, s)
	// a is used again: b is now the least recently used.
	s.Used(e.copyOf(a).GetFileHash())
	w := e.cat.Changes().Subscribe()
	defer w.Close()
	s.Requested(c)
	settle(t, s)

	if e.copyOf(a) == nil || e.copyOf(c) == nil {
		t.Errorf("copies of a and c: %v, %v; want both kept", e.copyOf(a), e.copyOf(c))
	}
	if nf := e.copyOf(b); nf != nil {
		t.Errorf("b's copy kept: %v; it was the least recently used", nf)
	}
	if u := s.Usage(); u.Files != 2 || u.Bytes > budget {
		t.Errorf("usage %+v, want 2 files within %d bytes", u, budget)
	}
	if st := s.Stats(); st.Evicted != 1 || st.Made != 3 {
		t.Errorf("stats %+v, want 3 made, 1 evicted", st)
	}
	var onDisk int64
	filepath.Walk(e.dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			onDisk += fi.Size()
		}
		return nil
	})
	if onDisk > budget {
		t.Errorf("%d bytes on disk, budget %d", onDisk, budget)
	}
	// Watchers hear that b's narinfo changed back, and that c's changed.
	changed := map[string]bool{}
	for deadline := time.After(5 * time.Second); !changed[b] || !changed[c]; {
		select {
		case ev := <-w.Events():
			for _, h := range ev.GetHashParts() {
				changed[h] = ev.GetKind() == indexv1.PathEventKind_PATH_EVENT_KIND_CHANGED
			}
		case <-deadline:
			t.Fatalf("events after the eviction: %v, want b and c changed", changed)
		}
	}
	// A NAR larger than the budget is not copied.
	big := e.addPath("h", budget+1, true)
	s.Requested(big)
	settle(t, s)
	if nf := e.copyOf(big); nf != nil {
		t.Errorf("a NAR larger than the budget was copied: %v", nf)
	}
}

func TestForgetAndRestart(t *testing.T) {
	e := newEnv(t)
	a, b := e.addPath("i", 8192, false), e.addPath("j", 8193, false)
	s, _, err := Open(Config{Dir: e.dir, StoreDir: e.storeDir, MaxBytes: 1 << 30, Log: slog.New(slog.DiscardHandler)}, e.cat)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx) }()
	s.Requested(a)
	s.Requested(b)
	settle(t, s)
	nfA, nfB := e.copyOf(a), e.copyOf(b)
	if nfA == nil || nfB == nil {
		t.Fatalf("copies: %v, %v", nfA, nfB)
	}
	relA, _ := s.RelativePath(nfA)
	relB, _ := s.RelativePath(nfB)
	fileOf := func(rel string) string { return filepath.Join(filepath.Dir(e.dir), filepath.FromSlash(rel)) }

	// The path a leaves the host's store: its copy goes with it.
	copies, _, err := e.cat.DeleteLocal([]string{a})
	if err != nil || len(copies) != 1 {
		t.Fatalf("DeleteLocal: %v, %v", copies, err)
	}
	s.Forget(copies)
	if _, err := os.Stat(fileOf(relA)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("copy of a removed path still on disk: %v", err)
	}
	if _, err := e.cat.HostNarByFile(strings.TrimPrefix(nfA.GetFileHash(), "sha256:")); !errors.Is(err, fault.ErrNotFound) {
		t.Errorf("copy of a removed path still found: %v", err)
	}
	cancel()
	<-done

	// A restart after b's file vanished, with a stray file and an
	// unfinished one: all cleaned, nothing kept.
	if err := os.Remove(fileOf(relB)); err != nil {
		t.Fatal(err)
	}
	stray := filepath.Join(e.dir, "zz", "zz"+strings.Repeat("1", 50)+".nar.zst")
	os.MkdirAll(filepath.Dir(stray), 0o755)
	os.WriteFile(stray, []byte("x"), 0o640)
	os.WriteFile(filepath.Join(e.dir, "tmp", "1.nar.zst"), []byte("half"), 0o600)
	s2, rep := e.open(1 << 30)
	if rep.Kept != 0 || rep.DroppedRecords != 1 || rep.RemovedFiles != 1 || rep.Leftovers != 1 {
		t.Errorf("start report %+v, want 0 kept, 1 record dropped, 1 file removed, 1 leftover", rep)
	}
	if nf := e.copyOf(b); nf != nil {
		t.Errorf("a copy whose file vanished is still named: %v", nf)
	}
	if _, err := os.Stat(stray); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stray file kept: %v", err)
	}
	if u := s2.Usage(); u.Files != 0 {
		t.Errorf("usage %+v after the restart, want none", u)
	}
}

func TestAhead(t *testing.T) {
	e := newEnv(t)
	// Catalogued before the start, and while it runs.
	a := e.addPath("k", 64<<10, true)
	s, _, err := Open(Config{Dir: e.dir, StoreDir: e.storeDir, MaxBytes: 100 << 10, Ahead: true, Log: slog.New(slog.DiscardHandler)}, e.cat)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx) }()
	defer func() { cancel(); <-done }()
	for deadline := time.Now().Add(20 * time.Second); e.copyOf(a) == nil; time.Sleep(2 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no copy made ahead of time of a path catalogued before the start: %+v", s.Stats())
		}
	}
	// No room for b's copy ahead of time: a's is kept.
	b := e.addPath("l", 64<<10, true)
	s.Appeared([]string{b})
	settle(t, s)
	if e.copyOf(b) != nil || e.copyOf(a) == nil {
		t.Errorf("copies of a, b: %v, %v; a copy made ahead of time evicted another", e.copyOf(a), e.copyOf(b))
	}
	// Downloaded, b's copy evicts a's.
	s.Requested(b)
	settle(t, s)
	if e.copyOf(b) == nil || e.copyOf(a) != nil {
		t.Errorf("copies of a, b: %v, %v; want b's only after its download", e.copyOf(a), e.copyOf(b))
	}
}

func TestRetiredCopyMadeAgain(t *testing.T) {
	e := newEnv(t)
	// a: numbers, which zstd compresses differently at each level; b:
	// random bytes. The budget holds b's copy alone.
	var numbers bytes.Buffer
	for i := range 20000 {
		fmt.Fprintln(&numbers, i*7919%100003)
	}
	a, b := e.addPathData("m", numbers.Bytes()), e.addPath("n", 64<<10, true)
	s, _ := e.open(70 << 10)
	s.Requested(a)
	settle(t, s)
	nfA := e.copyOf(a)
	if nfA == nil {
		t.Fatalf("no copy of a: %+v", s.Stats())
	}
	relA, _ := s.RelativePath(nfA)
	want, err := os.ReadFile(filepath.Join(filepath.Dir(e.dir), filepath.FromSlash(relA)))
	if err != nil {
		t.Fatal(err)
	}
	s.Requested(b)
	settle(t, s)
	if e.copyOf(a) != nil || e.copyOf(b) == nil {
		t.Fatalf("copies of a, b: %v, %v; want b's only", e.copyOf(a), e.copyOf(b))
	}

	hn, err := e.cat.HostNarByFile(strings.TrimPrefix(nfA.GetFileHash(), "sha256:"))
	if err != nil || !hn.Retired || hn.HashPart != a {
		t.Fatalf("HostNarByFile of the evicted copy: %+v, %v; want it retired", hn, err)
	}
	read := func(s *Store, offset, length uint64) ([]byte, error) {
		rg, err := s.OpenRetired(context.Background(), hn, offset, length)
		if err != nil {
			return nil, err
		}
		defer rg.Close()
		return io.ReadAll(rg)
	}
	got, err := read(s, 0, 0)
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("retired copy made again: %d bytes, %v; want the %d bytes evicted", len(got), err, len(want))
	}
	got, err = read(s, 100, 50)
	if err != nil || !bytes.Equal(got, want[100:150]) {
		t.Errorf("range 100+50 of the retired copy: %d bytes, %v", len(got), err)
	}
	// At another level the bytes differ: the stream fails before its end.
	other, _, err := Open(Config{Dir: e.dir, StoreDir: e.storeDir, MaxBytes: 70 << 10, Level: 1, Log: slog.New(slog.DiscardHandler)}, e.cat)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := read(other, 0, 0); err == nil {
		t.Errorf("a copy made again at another level was served whole (%d bytes)", len(got))
	}
	// Bytes of the right size but not the recorded hash: failed too.
	forged := hn
	forged.File = proto.Clone(hn.File).(*indexv1.NarFile)
	forged.File.FileHash = "sha256:" + strings.Repeat("1", 52)
	if rg, err := s.OpenRetired(context.Background(), forged, 0, 0); err == nil {
		got, err := io.ReadAll(rg)
		rg.Close()
		if err == nil {
			t.Errorf("bytes not of the recorded file hash were served whole (%d bytes)", len(got))
		}
	}
	// Only MaxRemakes are made again at once: the next is Unavailable
	// until one of them ends.
	var open []*narstore.Range
	for range MaxRemakes {
		rg, err := s.OpenRetired(context.Background(), hn, 0, 0)
		if err != nil {
			t.Fatalf("retired copy, within the bound: %v", err)
		}
		open = append(open, rg)
	}
	if rg, err := s.OpenRetired(context.Background(), hn, 0, 0); !errors.Is(err, fault.ErrUnavailable) {
		if err == nil {
			rg.Close()
		}
		t.Errorf("retired copy past %d made again at once: %v, want ErrUnavailable", MaxRemakes, err)
	}
	open[0].Close()
	if got, err := read(s, 0, 0); err != nil || !bytes.Equal(got, want) {
		t.Errorf("retired copy once a slot is free: %d bytes, %v", len(got), err)
	}
	for _, rg := range open[1:] {
		rg.Close()
	}
	// The path changed: no longer the copy's NAR.
	info, _, _ := e.cat.LocalPathInfo(a)
	info.NarHash = "sha256:" + strings.Repeat("0", 52)
	if err := e.cat.PutLocal([]catalog.LocalPath{{Info: info, Signed: true}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.OpenRetired(context.Background(), hn, 0, 0); !errors.Is(err, fault.ErrNotFound) {
		t.Errorf("retired copy of a changed path: %v, want ErrNotFound", err)
	}
	// Gone with the path.
	if _, _, err := e.cat.DeleteLocal([]string{a}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.cat.HostNarByFile(strings.TrimPrefix(nfA.GetFileHash(), "sha256:")); !errors.Is(err, fault.ErrNotFound) {
		t.Errorf("retired copy of a deleted path still found: %v", err)
	}
}

func TestQueueBounded(t *testing.T) {
	e := newEnv(t)
	s, _, err := Open(Config{Dir: e.dir, StoreDir: e.storeDir, MaxBytes: 1 << 30, Log: slog.New(slog.DiscardHandler)}, e.cat)
	if err != nil {
		t.Fatal(err)
	}
	// Reported downloads of paths nobody has: a flood, not run.
	for i := range maxQueued + 100 {
		s.Requested(fmt.Sprintf("%032d", i))
	}
	if n := s.Pending(); n != maxQueued {
		t.Errorf("%d paths queued, want at most %d", n, maxQueued)
	}
}
