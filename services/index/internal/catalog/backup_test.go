package catalog_test

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/protobuf/proto"

	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/fault"
)

// TestBackup: the copy opens as a catalogue with the records of the
// moment of the call, not those written after; the catalogue goes on
// working; no file is left beside it.
func TestBackup(t *testing.T) {
	dir := t.TempDir()
	c := open(t, filepath.Join(dir, "catalog.db"))
	defer c.Close()
	info := &indexv1.PathInfo{StorePath: "/nix/store/" + hashA + "-a", NarHash: "sha256:n", NarSize: 1, Signatures: []string{"k:s"}}
	nf := &indexv1.NarFile{FileHash: "sha256:" + fileX, FileSize: 1}
	if _, err := c.AddNarFile(fileX, nf); err != nil {
		t.Fatal(err)
	}
	if _, err := c.UpdatePathInfo(hashA, func(*indexv1.PathInfo) (*indexv1.PathInfo, error) { return info, nil }); err != nil {
		t.Fatal(err)
	}
	pin := &indexv1.Pin{StorePath: info.StorePath}
	if err := c.PutPin(hashA, pin); err != nil {
		t.Fatal(err)
	}

	f, size, err := c.Backup()
	if err != nil {
		t.Fatal(err)
	}
	// Written after the copy: in the catalogue, not in the copy.
	later := &indexv1.PathInfo{StorePath: "/nix/store/" + hashB + "-b", NarHash: "sha256:m", NarSize: 2}
	if _, err := c.UpdatePathInfo(hashB, func(*indexv1.PathInfo) (*indexv1.PathInfo, error) { return later, nil }); err != nil {
		t.Fatalf("write after a backup: %v", err)
	}
	copyPath := filepath.Join(t.TempDir(), "catalog.db")
	out, err := os.Create(copyPath)
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(out, f)
	f.Close()
	if err != nil || out.Close() != nil {
		t.Fatalf("reading the copy: %v", err)
	}
	if n != size {
		t.Errorf("the copy has %d bytes, Backup said %d", n, size)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() != "catalog.db" {
			t.Errorf("left beside the catalogue: %s", e.Name())
		}
	}

	restored := open(t, copyPath)
	defer restored.Close()
	if got, err := restored.PathInfo(hashA); err != nil || !proto.Equal(got, info) {
		t.Errorf("PathInfo in the copy: %v, %v; want %v", got, err, info)
	}
	if got, err := restored.NarFile(fileX); err != nil || !proto.Equal(got, nf) {
		t.Errorf("NarFile in the copy: %v, %v; want %v", got, err, nf)
	}
	if pins, err := restored.Pins(); err != nil || len(pins) != 1 || pins[0].GetStorePath() != pin.StorePath {
		t.Errorf("pins in the copy: %v, %v; want %v", pins, err, pin)
	}
	if _, err := restored.PathInfo(hashB); !errors.Is(err, fault.ErrNotFound) {
		t.Errorf("a path written after the backup is in the copy: %v", err)
	}
}
