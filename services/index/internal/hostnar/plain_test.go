package hostnar

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nixcache/nixcache/nix/compression"
	"github.com/nixcache/nixcache/nix/nardump"
	"github.com/nixcache/nixcache/nix/nixhash"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
)

// openWith opens the copies with cfg (its directories and log set here)
// and runs their worker until stop is called or the test ends.
func (e *env) openWith(cfg Config) (s *Store, rep StartReport, stop func()) {
	e.t.Helper()
	cfg.Dir, cfg.StoreDir, cfg.Log = e.dir, e.storeDir, slog.New(slog.DiscardHandler)
	s, rep, err := Open(cfg, e.cat)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx) }()
	stopped := false
	stop = func() {
		if !stopped {
			stopped = true
			cancel()
			<-done
		}
	}
	e.t.Cleanup(stop)
	return s, rep, stop
}

// dumpNar returns the NAR of the host path with this hash part.
func (e *env) dumpNar(hash string) []byte {
	e.t.Helper()
	r, err := nardump.Open(filepath.Join(e.storeDir, hash+"-p"), 0)
	if err != nil {
		e.t.Fatal(err)
	}
	defer r.Close()
	nar, err := io.ReadAll(r)
	if err != nil {
		e.t.Fatal(err)
	}
	return nar
}

// fileOf returns the bytes of the copy nf on disk.
func (e *env) fileOf(s *Store, nf *indexv1.NarFile) ([]byte, error) {
	rel, err := s.RelativePath(nf)
	if err != nil {
		return nil, err
	}
	return os.ReadFile(filepath.Join(filepath.Dir(e.dir), filepath.FromSlash(rel)))
}

func TestPlainCopyMadeVerifiedAndNamed(t *testing.T) {
	e := newEnv(t)
	h := e.addPath("a", 1<<20, false)
	s, _, _ := e.openWith(Config{Compression: compression.None, MaxBytes: 1 << 30})
	s.Requested(h)
	settle(t, s)

	nf := e.copyOf(h)
	if nf == nil {
		t.Fatalf("no plain copy recorded: stats %+v", s.Stats())
	}
	info, _, _ := e.cat.LocalPathInfo(h)
	// A plain copy is the NAR: its file hash and size are the NAR's.
	if nf.GetCompression() != compression.None || nf.GetFileHash() != info.GetNarHash() || nf.GetFileSize() != info.GetNarSize() ||
		nf.GetNarHash() != info.GetNarHash() || nf.GetNarSize() != info.GetNarSize() {
		t.Errorf("plain copy record %v does not match the path %v", nf, info)
	}
	fh, _ := nixhash.Parse(nf.GetFileHash())
	if info.GetUrl() != "nar/"+fh.NixBase32()+".nar" {
		t.Errorf("narinfo URL %q does not name the plain copy %s", info.GetUrl(), nf.GetFileHash())
	}
	rel, err := s.RelativePath(nf)
	if err != nil || rel != "host/"+fh.NixBase32()[:2]+"/"+fh.NixBase32()+".nar" {
		t.Errorf("relative path %q (%v), want host/<2>/<hash>.nar", rel, err)
	}
	data, err := e.fileOf(s, nf)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(data, e.dumpNar(h)) {
		t.Errorf("the plain copy (%d bytes) is not the path's NAR", len(data))
	}
	sum := sha256.Sum256(data)
	if got := (nixhash.Hash{Algo: nixhash.SHA256, Digest: sum[:]}); got.String() != nf.GetFileHash() {
		t.Errorf("file on disk hashes to %s, recorded %s", got, nf.GetFileHash())
	}
	if hn, err := e.cat.HostNarByFile(fh.NixBase32()); err != nil || hn.HashPart != h || hn.Retired {
		t.Errorf("HostNarByFile: %+v, %v", hn, err)
	}
	rg, err := s.Open(context.Background(), nf, 1000, 100)
	if err != nil {
		t.Fatal(err)
	}
	part, err := io.ReadAll(rg)
	rg.Close()
	if err != nil || rg.Compression != compression.None || !bytes.Equal(part, data[1000:1100]) {
		t.Errorf("range 1000+100 of the plain copy: %d bytes, %q, %v", len(part), rg.Compression, err)
	}
}

func TestPlainCopyOfChangedPathRefused(t *testing.T) {
	e := newEnv(t)
	h := e.addPath("b", 4096, false)
	if err := os.WriteFile(filepath.Join(e.storeDir, h+"-p"), bytes.Repeat([]byte("x"), 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	s, _, _ := e.openWith(Config{Compression: compression.None, MaxBytes: 1 << 30})
	s.Requested(h)
	settle(t, s)
	if nf := e.copyOf(h); nf != nil {
		t.Errorf("a plain copy of a path changed on disk was recorded: %v", nf)
	}
	if st := s.Stats(); st.Skipped != 1 {
		t.Errorf("stats %+v, want 1 skipped", st)
	}
}

func TestPlainCopyEvictedAndRetired(t *testing.T) {
	e := newEnv(t)
	// Plain copies are the NARs' size: 64 KiB and some; the budget holds
	// one.
	a, b := e.addPath("d", 64<<10, false), e.addPath("f", 64<<10, true)
	const budget = 100 << 10
	s, _, _ := e.openWith(Config{Compression: compression.None, MaxBytes: budget})
	s.Requested(a)
	settle(t, s)
	nfA := e.copyOf(a)
	if nfA == nil {
		t.Fatalf("no plain copy of a: %+v", s.Stats())
	}
	s.Requested(b)
	settle(t, s)
	if e.copyOf(a) != nil || e.copyOf(b) == nil {
		t.Fatalf("plain copies of a, b: %v, %v; want b's only", e.copyOf(a), e.copyOf(b))
	}
	if u := s.Usage(); u.Files != 1 || u.Bytes > budget {
		t.Errorf("usage %+v, want 1 file within %d bytes", u, budget)
	}
	if _, err := e.fileOf(s, nfA); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("evicted plain copy still on disk: %v", err)
	}
	if info, _, _ := e.cat.LocalPathInfo(a); info.GetFile() != nil || info.GetUrl() != "" {
		t.Errorf("a's narinfo still names a copy after the eviction: %v", info)
	}
	// A client holding the old narinfo gets the NAR, dumped again.
	hn, err := e.cat.HostNarByFile(strings.TrimPrefix(nfA.GetFileHash(), "sha256:"))
	if err != nil || !hn.Retired {
		t.Fatalf("HostNarByFile of the evicted plain copy: %+v, %v", hn, err)
	}
	rg, err := s.OpenRetired(context.Background(), hn, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rg)
	rg.Close()
	if err != nil || !bytes.Equal(got, e.dumpNar(a)) {
		t.Errorf("retired plain copy made again: %d bytes, %v; want a's NAR", len(got), err)
	}
}

func TestCompressionChangeRetiresCopies(t *testing.T) {
	e := newEnv(t)
	h := e.addPath("g", 8192, false)
	s, _, stop := e.openWith(Config{MaxBytes: 1 << 30})
	s.Requested(h)
	settle(t, s)
	zst := e.copyOf(h)
	if zst == nil || zst.GetCompression() != compression.Zstd {
		t.Fatalf("zstd copy: %v", zst)
	}
	stop()

	// Restarted with plain copies: the zstd copy is retired (its file
	// removed), and the next download makes a plain one.
	s2, rep, _ := e.openWith(Config{Compression: compression.None, MaxBytes: 1 << 30})
	if rep.Recompressed != 1 || rep.Kept != 0 || rep.RemovedFiles != 0 {
		t.Errorf("start report %+v, want 1 recompressed, no stray file removed, none kept", rep)
	}
	if files, err := filepath.Glob(filepath.Join(e.dir, "*", "*")); err != nil || len(files) != 0 {
		t.Errorf("files left after the change of compression: %v (%v)", files, err)
	}
	if nf := e.copyOf(h); nf != nil {
		t.Errorf("the narinfo still names the zstd copy: %v", nf)
	}
	if hn, err := e.cat.HostNarByFile(strings.TrimPrefix(zst.GetFileHash(), "sha256:")); err != nil || !hn.Retired {
		t.Errorf("the zstd copy is not retired: %+v, %v", hn, err)
	}
	s2.Requested(h)
	settle(t, s2)
	if nf := e.copyOf(h); nf == nil || nf.GetCompression() != compression.None {
		t.Errorf("copy after the change: %v, want a plain one", nf)
	}
}

func TestUnknownCompressionRefused(t *testing.T) {
	e := newEnv(t)
	_, _, err := Open(Config{Dir: e.dir, StoreDir: e.storeDir, Compression: compression.XZ, MaxBytes: 1 << 30, Log: slog.New(slog.DiscardHandler)}, e.cat)
	if err == nil || !strings.Contains(err.Error(), "xz") {
		t.Errorf("Open with compression xz: %v, want an error naming it", err)
	}
}
