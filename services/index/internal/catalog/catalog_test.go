package catalog_test

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/catalog"
	"github.com/nixcache/nixcache/services/index/internal/fault"
)

var (
	hashA = strings.Repeat("a", 32)
	hashB = strings.Repeat("b", 32)
	hashC = strings.Repeat("c", 32)
	fileX = strings.Repeat("x", 52)
)

func open(t *testing.T, path string) *catalog.Catalog {
	t.Helper()
	c, err := catalog.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestNarFiles(t *testing.T) {
	c := open(t, filepath.Join(t.TempDir(), "catalog.db"))
	defer c.Close()
	if _, err := c.NarFile(fileX); !errors.Is(err, fault.ErrNotFound) {
		t.Fatalf("NarFile of an empty catalogue: %v, want ErrNotFound", err)
	}
	first := &indexv1.NarFile{FileHash: "sha256:" + fileX, FileSize: 10, Compression: "xz", NarHash: "sha256:n", NarSize: 20}
	got, err := c.AddNarFile(fileX, first)
	if err != nil || !proto.Equal(got, first) {
		t.Fatalf("AddNarFile: %v, %v", got, err)
	}
	// A second record for the same hash keeps the first.
	second := proto.Clone(first).(*indexv1.NarFile)
	second.NarSize = 99
	got, err = c.AddNarFile(fileX, second)
	if err != nil || !proto.Equal(got, first) {
		t.Errorf("second AddNarFile returned %v, %v; want the first record", got, err)
	}
	got, err = c.NarFile(fileX)
	if err != nil || !proto.Equal(got, first) {
		t.Errorf("NarFile: %v, %v; want %v", got, err, first)
	}
}

func TestPaths(t *testing.T) {
	c := open(t, filepath.Join(t.TempDir(), "catalog.db"))
	defer c.Close()
	a := &indexv1.PathInfo{StorePath: "/nix/store/" + hashA + "-a", NarHash: "sha256:n", NarSize: 1}
	tests := []struct {
		name    string
		fn      func(old *indexv1.PathInfo) (*indexv1.PathInfo, error)
		wantErr error
		want    *indexv1.PathInfo
	}{
		{"insert", func(old *indexv1.PathInfo) (*indexv1.PathInfo, error) {
			if old != nil {
				t.Errorf("old = %v on insert", old)
			}
			return a, nil
		}, nil, a},
		{"keep", func(old *indexv1.PathInfo) (*indexv1.PathInfo, error) { return nil, nil }, nil, a},
		{"refuse", func(old *indexv1.PathInfo) (*indexv1.PathInfo, error) {
			return nil, fault.Exists("no")
		}, fault.ErrExists, a},
		{"update", func(old *indexv1.PathInfo) (*indexv1.PathInfo, error) {
			next := proto.Clone(old).(*indexv1.PathInfo)
			next.Signatures = []string{"k:s"}
			return next, nil
		}, nil, &indexv1.PathInfo{StorePath: a.StorePath, NarHash: a.NarHash, NarSize: 1, Signatures: []string{"k:s"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := c.UpdatePathInfo(hashA, tt.fn)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("UpdatePathInfo: %v, want %v", err, tt.wantErr)
			}
			got, err := c.PathInfo(hashA)
			if err != nil || !proto.Equal(got, tt.want) {
				t.Errorf("PathInfo: %v, %v; want %v", got, err, tt.want)
			}
		})
	}
	if _, err := c.PathInfo(hashB); !errors.Is(err, fault.ErrNotFound) {
		t.Errorf("PathInfo of an absent path: %v, want ErrNotFound", err)
	}
	present, err := c.PresentPaths([]string{hashB, hashA, hashC, hashA})
	if err != nil || len(present) != 1 || present[0] != hashA {
		t.Errorf("PresentPaths = %v, %v; want [%s]", present, err, hashA)
	}
}

// TestReopen: records survive closing and reopening; a second Open of a
// database still open fails instead of hanging.
func TestReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "catalog.db")
	c := open(t, path)
	info := &indexv1.PathInfo{StorePath: "/nix/store/" + hashA + "-a", NarHash: "sha256:n", NarSize: 1}
	nf := &indexv1.NarFile{FileHash: "sha256:" + fileX, FileSize: 1}
	if _, err := c.UpdatePathInfo(hashA, func(*indexv1.PathInfo) (*indexv1.PathInfo, error) { return info, nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AddNarFile(fileX, nf); err != nil {
		t.Fatal(err)
	}
	if _, err := catalog.Open(path); err == nil {
		t.Fatal("a second Open of an open catalogue succeeded")
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}

	c = open(t, path)
	defer c.Close()
	if got, err := c.PathInfo(hashA); err != nil || !proto.Equal(got, info) {
		t.Errorf("PathInfo after reopening: %v, %v", got, err)
	}
	if got, err := c.NarFile(fileX); err != nil || !proto.Equal(got, nf) {
		t.Errorf("NarFile after reopening: %v, %v", got, err)
	}
}

// TestRepublishAfterQuarantine: a path that Verify quarantined and that is
// pushed again (its NAR file, then its narinfo) is served again, and no
// longer counted as quarantined.
func TestRepublishAfterQuarantine(t *testing.T) {
	c := open(t, filepath.Join(t.TempDir(), "catalog.db"))
	defer c.Close()
	fileX := strings.Repeat("0", 52) // a valid nix32 digest: Quarantine parses it
	nf := &indexv1.NarFile{FileHash: "sha256:" + fileX, FileSize: 10, Compression: "none", NarHash: "sha256:" + fileX, NarSize: 10}
	info := &indexv1.PathInfo{StorePath: "/nix/store/" + hashA + "-a", NarHash: nf.NarHash, NarSize: 10, File: nf}
	publish := func() {
		t.Helper()
		if _, err := c.AddNarFile(fileX, nf); err != nil {
			t.Fatal(err)
		}
		if _, err := c.UpdatePathInfo(hashA, func(*indexv1.PathInfo) (*indexv1.PathInfo, error) { return info, nil }); err != nil {
			t.Fatal(err)
		}
	}
	publish()
	if moved, err := c.Quarantine(hashA, info.NarHash); err != nil || len(moved) != 1 {
		t.Fatalf("Quarantine: %v, %v", moved, err)
	}
	if _, err := c.NarFile(fileX); !errors.Is(err, fault.ErrNotFound) {
		t.Fatalf("NarFile after quarantine: %v, want ErrNotFound", err)
	}
	publish()
	if _, err := c.PathInfo(hashA); err != nil {
		t.Errorf("PathInfo after pushing again: %v", err)
	}
	snap, err := c.Snapshot(false)
	if err != nil {
		t.Fatal(err)
	}
	if e := snap.Paths[hashA]; e == nil || e.Quarantined {
		t.Errorf("after pushing again the path is %+v, want published and not quarantined", e)
	}
	n, err := c.Counts()
	if err != nil || n.Pushed != 1 || n.Quarantined != 0 {
		t.Errorf("Counts = %+v, %v; want 1 pushed, 0 quarantined", n, err)
	}
}
