package narstore_test

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nixcache/nixcache/nix/compression"
	"github.com/nixcache/nixcache/nix/nixhash"
	"github.com/nixcache/nixcache/services/index/internal/narstore"
	"github.com/nixcache/nixcache/services/index/internal/nartest"
)

// TestWalkAndStat: Walk finds every stored file by hash and compression
// (and skips what the store would not have written), Stat sizes a file
// and tells a missing one; the disk makes no presigned URLs.
func TestWalkAndStat(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, testLimit)
	narData := nartest.Small(t, 3)
	want := map[string]string{}
	var files []int64
	for _, comp := range []string{compression.None, compression.Zstd} {
		nf, err := s.Ingest(context.Background(), bytes.NewReader(nartest.Compress(t, comp, narData)), narstore.Expect{})
		if err != nil {
			t.Fatal(err)
		}
		h, _ := nixhash.Parse(nf.GetFileHash())
		want[h.NixBase32()] = comp
		size, err := s.Stat(context.Background(), nf)
		if err != nil || uint64(size) != nf.GetFileSize() {
			t.Errorf("Stat %s: %d, %v; want %d", comp, size, err, nf.GetFileSize())
		}
		files = append(files, size)
		if _, ok, err := s.Presign(context.Background(), nf, time.Hour); ok || err != nil {
			t.Errorf("Presign on disk: ok %v, %v; want none", ok, err)
		}
		if comp == compression.Zstd {
			name, _ := s.Path(nf)
			if err := os.Remove(name); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Stat(context.Background(), nf); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("Stat of a removed file: %v, want fs.ErrNotExist", err)
			}
			delete(want, h.NixBase32())
		}
	}
	// Not the store's: skipped.
	if err := os.WriteFile(filepath.Join(dir, "nars", "stray"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	err := s.Walk(context.Background(), func(f narstore.StoredFile) error {
		got[f.FileHash] = f.Compression
		if f.Size != files[0] {
			t.Errorf("Walk: %s has size %d, want %d", f.FileHash, f.Size, files[0])
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("Walk found %v, want %v", got, want)
	}
	for h, c := range want {
		if got[h] != c {
			t.Errorf("Walk: %s is %q, want %q", h, got[h], c)
		}
	}
}
