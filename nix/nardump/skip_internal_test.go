package nardump

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/nixcache/nixcache/nix/nar"
)

// TestSkippedFilesAreNotOpened: a read from an offset opens only the files
// whose contents reach past it.
func TestSkippedFilesAreNotOpened(t *testing.T) {
	root := filepath.Join(t.TempDir(), "tree")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, size := range map[string]int{"a": 100000, "b": 5000, "c": 7} {
		if err := os.WriteFile(filepath.Join(root, name), bytes.Repeat([]byte(name), size), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var want bytes.Buffer
	if err := nar.DumpPath(&want, root); err != nil {
		t.Fatal(err)
	}
	var opened []string
	openFile = func(p string) (*os.File, error) {
		opened = append(opened, filepath.Base(p))
		return os.Open(p)
	}
	t.Cleanup(func() { openFile = os.Open })

	// An offset inside b's contents: a is skipped unopened.
	off := bytes.Index(want.Bytes(), []byte("bbbb")) + 10
	r, err := Open(root, uint64(off))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	got, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want.Bytes()[off:]) {
		t.Fatalf("dump from %d differs from nar.DumpPath", off)
	}
	if len(opened) != 2 || opened[0] != "b" || opened[1] != "c" {
		t.Errorf("opened %q, want only b and c", opened)
	}
}
