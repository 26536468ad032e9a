package nardump_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/nixcache/nixcache/nix/nar"
	"github.com/nixcache/nixcache/nix/nardump"
)

// makeTree builds, under dir, a tree with every kind of node: nested and
// empty directories, executable and empty files, files whose sizes need
// padding, symlinks (dangling, absolute, to a directory), names that sort
// differently as bytes and as text; a file of libSize bytes, and a large
// file when big > 0.
func makeTree(t testing.TB, dir string, libSize, big int) string {
	t.Helper()
	root := filepath.Join(dir, "tree")
	rng := rand.New(rand.NewPCG(7, 8))
	data := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	files := map[string][]byte{
		"a":                  data(1),
		"B":                  data(7),
		"bin/run":            []byte("#!/bin/sh\necho hi\n"),
		"lib/libx.so.1.2":    data(libSize),
		"lib/pkgconfig/x.pc": []byte("Name: x\n"),
		"share/doc/README":   data(8),
		"share/doc/empty":    nil,
		"z-9":                data(9),
		"z-10":               data(4095),
	}
	if big > 0 {
		files["lib/big"] = data(big)
	}
	for name, contents := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, contents, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{"empty", "share/empty-too"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Join(root, "bin/run"), 0o755); err != nil {
		t.Fatal(err)
	}
	// Only the owner's execute bit makes a file executable.
	if err := os.Chmod(filepath.Join(root, "a"), 0o611); err != nil {
		t.Fatal(err)
	}
	for link, target := range map[string]string{
		"lib/libx.so":  "libx.so.1.2",
		"dangling":     "no/such/file",
		"abs":          "/nix/store/00000000000000000000000000000000-x",
		"share/libdir": "../lib",
	} {
		if err := os.Symlink(target, filepath.Join(root, link)); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// reference is nar.DumpPath's serialisation of path.
func reference(t testing.TB, path string) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := nar.DumpPath(&buf, path); err != nil {
		t.Fatalf("nar.DumpPath: %v", err)
	}
	return buf.Bytes()
}

// readAll reads r to the end in reads of the given size.
func readAll(t testing.TB, r io.Reader, size int) ([]byte, error) {
	t.Helper()
	var out bytes.Buffer
	buf := make([]byte, size)
	for {
		n, err := r.Read(buf)
		out.Write(buf[:n])
		if err == io.EOF {
			return out.Bytes(), nil
		}
		if err != nil {
			return out.Bytes(), err
		}
	}
}

func dump(t testing.TB, path string, offset uint64, readSize int) []byte {
	t.Helper()
	r, err := nardump.Open(path, offset)
	if err != nil {
		t.Fatalf("Open(%s, %d): %v", path, offset, err)
	}
	defer r.Close()
	got, err := readAll(t, r, readSize)
	if err != nil {
		t.Fatalf("read dump of %s from %d: %v", path, offset, err)
	}
	return got
}

func TestDumpMatchesDumpPath(t *testing.T) {
	dir := t.TempDir()
	tree := makeTree(t, dir, 70000, 0)
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("a single file"), 0o755); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.Mkdir(empty, 0o755); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink("tree", link); err != nil {
		t.Fatal(err)
	}
	emptyFile := filepath.Join(dir, "empty-file")
	if err := os.WriteFile(emptyFile, nil, 0o644); err != nil {
		t.Fatal(err)
	}

	for _, root := range []string{tree, file, empty, link, emptyFile} {
		want := reference(t, root)
		for _, readSize := range []int{1, 5, 8, 4096, 1 << 20} {
			t.Run(fmt.Sprintf("%s/read-%d", filepath.Base(root), readSize), func(t *testing.T) {
				if got := dump(t, root, 0, readSize); !bytes.Equal(got, want) {
					t.Errorf("dump differs from nar.DumpPath: %d bytes, want %d; first difference at %d", len(got), len(want), firstDiff(got, want))
				}
			})
		}
	}
}

// TestDumpFromEveryOffset starts at every offset of a small tree's NAR
// and at the offsets around every boundary of a larger one.
func TestDumpFromEveryOffset(t *testing.T) {
	tree := makeTree(t, t.TempDir(), 700, 0)
	want := reference(t, tree)
	for off := 0; off <= len(want)+8; off++ {
		got := dump(t, tree, uint64(off), 4096)
		w := want[min(off, len(want)):]
		if !bytes.Equal(got, w) {
			t.Fatalf("from offset %d: %d bytes, want %d; first difference at %d", off, len(got), len(w), firstDiff(got, w))
		}
	}
}

func TestDumpLargeFileFromOffsets(t *testing.T) {
	tree := makeTree(t, t.TempDir(), 70000, 3<<20+5)
	want := reference(t, tree)
	rng := rand.New(rand.NewPCG(1, 1))
	offsets := []uint64{0, 1, uint64(len(want)) - 1, uint64(len(want))}
	for range 50 {
		offsets = append(offsets, rng.Uint64N(uint64(len(want))))
	}
	for _, off := range offsets {
		got := dump(t, tree, off, 256<<10)
		if !bytes.Equal(got, want[off:]) {
			t.Fatalf("from offset %d: %d bytes, want %d; first difference at %d", off, len(got), len(want)-int(off), firstDiff(got, want[off:]))
		}
	}
}

func TestDumpErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := nardump.Open(filepath.Join(dir, "missing"), 0); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Open of a missing path: %v, want fs.ErrNotExist", err)
	}

	// A file that shrinks after its size was written.
	root := filepath.Join(dir, "shrinks")
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(root, "f")
	if err := os.WriteFile(f, bytes.Repeat([]byte("z"), 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := nardump.Open(root, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	buf := make([]byte, 4096)
	if _, err := io.ReadFull(r, buf); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(f, 10000); err != nil {
		t.Fatal(err)
	}
	_, err = readAll(t, r, 4096)
	if err == nil || !strings.Contains(err.Error(), "shrank") {
		t.Errorf("dump of a file that shrank: %v, want an error saying so", err)
	}
	if _, err2 := r.Read(buf); err2 == nil || err2 == io.EOF {
		t.Errorf("Read after an error: %v, want the error again", err2)
	}

	// A FIFO is not something a store path may hold.
	fifoRoot := filepath.Join(dir, "fifo")
	if err := os.MkdirAll(fifoRoot, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(fifoRoot, "p"), 0o644); err != nil {
		t.Fatalf("mkfifo: %v", err)
	}
	r2, err := nardump.Open(fifoRoot, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	if _, err := readAll(t, r2, 4096); err == nil || !strings.Contains(err.Error(), "unsupported file type") {
		t.Errorf("dump of a FIFO: %v, want unsupported file type", err)
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
