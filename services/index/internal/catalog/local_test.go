package catalog_test

import (
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/catalog"
	"github.com/nixcache/nixcache/services/index/internal/fault"
)

func localInfo(hash, narHash string, sigs ...string) *indexv1.PathInfo {
	return &indexv1.PathInfo{StorePath: "/nix/store/" + hash + "-p", NarHash: narHash, NarSize: 1, Signatures: sigs}
}

func TestLocalPaths(t *testing.T) {
	c := open(t, filepath.Join(t.TempDir(), "catalog.db"))
	defer c.Close()
	hashD := strings.Repeat("d", 32)

	err := c.PutLocal([]catalog.LocalPath{
		{Info: localInfo(hashA, "sha256:a", "k:a"), Signed: true},
		{Info: localInfo(hashC, "sha256:c")},
	})
	if err != nil {
		t.Fatal(err)
	}
	if info, signed, err := c.LocalPathInfo(hashA); err != nil || !signed || info.GetNarHash() != "sha256:a" {
		t.Errorf("LocalPathInfo(a): %v, %v, %v", info, signed, err)
	}
	if _, signed, err := c.LocalPathInfo(hashC); err != nil || signed {
		t.Errorf("LocalPathInfo(c): signed %v, %v; want unsigned", signed, err)
	}
	if _, _, err := c.LocalPathInfo(hashB); !errors.Is(err, fault.ErrNotFound) {
		t.Errorf("LocalPathInfo(b): %v, want ErrNotFound", err)
	}
	// Local paths are not published paths, and the other way round.
	if _, err := c.PathInfo(hashA); !errors.Is(err, fault.ErrNotFound) {
		t.Errorf("PathInfo of a local path: %v, want ErrNotFound", err)
	}

	// An unsigned record does not replace a signed one of the same NAR;
	// one of another NAR does.
	if err := c.PutLocal([]catalog.LocalPath{{Info: localInfo(hashA, "sha256:a")}}); err != nil {
		t.Fatal(err)
	}
	if info, signed, _ := c.LocalPathInfo(hashA); !signed || len(info.GetSignatures()) != 1 {
		t.Errorf("a signed record was replaced by an unsigned one: %v, signed %v", info, signed)
	}
	if err := c.PutLocal([]catalog.LocalPath{{Info: localInfo(hashA, "sha256:a2")}}); err != nil {
		t.Fatal(err)
	}
	if info, signed, _ := c.LocalPathInfo(hashA); signed || info.GetNarHash() != "sha256:a2" {
		t.Errorf("a record of another NAR was not recorded: %v, signed %v", info, signed)
	}

	unsigned, err := c.UnsignedLocal(10)
	if err != nil || len(unsigned) != 2 {
		t.Fatalf("UnsignedLocal: %v, %v; want a and c", unsigned, err)
	}
	// SignedLocal replaces only records still there with the same NAR.
	n, err := c.SignedLocal([]*indexv1.PathInfo{
		localInfo(hashA, "sha256:a2", "k:a2"), localInfo(hashC, "sha256:other", "k:c"), localInfo(hashD, "sha256:d", "k:d"),
	})
	if err != nil || n != 1 {
		t.Errorf("SignedLocal: %d, %v; want 1", n, err)
	}
	if _, _, err := c.LocalPathInfo(hashD); !errors.Is(err, fault.ErrNotFound) {
		t.Errorf("SignedLocal added a path: %v", err)
	}
	if unsigned, _ := c.UnsignedLocal(10); len(unsigned) != 1 || unsigned[0].GetNarHash() != "sha256:c" {
		t.Errorf("UnsignedLocal after SignedLocal: %v, want c only", unsigned)
	}

	missing, extra, err := c.DiffLocal([]string{hashB, hashC, hashD})
	if err != nil || !slices.Equal(missing, []int{0, 2}) || !slices.Equal(extra, []string{hashA}) {
		t.Errorf("DiffLocal: missing %v, extra %v, %v; want [0 2], [a]", missing, extra, err)
	}
	if present, err := c.PresentLocal([]string{hashD, hashC, hashA, hashC}); err != nil || !slices.Equal(present, []string{hashC, hashA}) {
		t.Errorf("PresentLocal: %v, %v", present, err)
	}

	if _, _, err := c.DeleteLocal([]string{hashC}); err != nil {
		t.Fatal(err)
	}
	if unsigned, _ := c.UnsignedLocal(10); len(unsigned) != 0 {
		t.Errorf("a deleted path is still listed unsigned: %v", unsigned)
	}
	if _, err := c.ClearLocal(); err != nil {
		t.Fatal(err)
	}
	if _, extra, _ := c.DiffLocal(nil); len(extra) != 0 {
		t.Errorf("paths left after ClearLocal: %v", extra)
	}
}
