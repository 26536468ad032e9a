package nar_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/nixcache/nixcache/nix/internal/nixtest"
	"github.com/nixcache/nixcache/nix/nar"
)

// build makes NAR bytes from parts: a string is written as a NAR string
// (length, bytes, zero padding), a []byte as is, a uint64 as a bare number,
// a []any recursively.
func build(parts ...any) []byte {
	var b bytes.Buffer
	var add func(p any)
	add = func(p any) {
		switch p := p.(type) {
		case string:
			binary.Write(&b, binary.LittleEndian, uint64(len(p)))
			b.WriteString(p)
			b.Write(make([]byte, (8-len(p)%8)%8))
		case []byte:
			b.Write(p)
		case uint64:
			binary.Write(&b, binary.LittleEndian, p)
		case []any:
			for _, q := range p {
				add(q)
			}
		default:
			panic(fmt.Sprintf("build: %T", p))
		}
	}
	for _, p := range parts {
		add(p)
	}
	return b.Bytes()
}

// Node builders for build.
func file(contents string) []any {
	return []any{"(", "type", "regular", "contents", contents, ")"}
}
func exe(contents string) []any {
	return []any{"(", "type", "regular", "executable", "", "contents", contents, ")"}
}
func link(target string) []any { return []any{"(", "type", "symlink", "target", target, ")"} }
func dir(entries ...[]any) []any {
	out := []any{"(", "type", "directory"}
	for _, e := range entries {
		out = append(out, e...)
	}
	return append(out, ")")
}
func entry(name string, node []any) []any {
	return []any{"entry", "(", "name", name, "node", node, ")"}
}
func archive(node []any) []byte { return build("nix-archive-1", node) }

// makeTree creates in dir a tree with everything DumpPath must handle.
func makeTree(t testing.TB, root string) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	write := func(name, content string, mode os.FileMode) {
		t.Helper()
		p := filepath.Join(root, name)
		must(os.WriteFile(p, []byte(content), mode))
		must(os.Chmod(p, mode))
	}
	for _, d := range []string{"bin", "empty-dir", "nested/a/b/c/d", "nested/a/b2", "lib/pkgconfig"} {
		must(os.MkdirAll(filepath.Join(root, d), 0o755))
	}
	write("bin/hello", "#!/bin/sh\necho hello\n", 0o755)
	write("bin/user-exec-only", "x", 0o700)
	write("bin/group-exec-only", "x", 0o654) // not executable for Nix: only the owner's bit counts
	write("bin/other-exec-only", "x", 0o645)
	write("empty", "", 0o644)
	write("nested/a/b/c/d/deep", "deep\n", 0o444)
	write("nested/a/b2/f", strings.Repeat("7", 7), 0o644)
	write("lib/pkgconfig/x.pc", strings.Repeat("p", 8), 0o644)
	write("lib/nine", strings.Repeat("9", 9), 0o644)
	// Names that sort by bytes, not by locale, and unusual bytes.
	for _, name := range []string{"B", "a", "a-b", "a.b", "a b", "a\x01", "ab", "-dash", "~tilde", "é-utf8", "\xff\xfe-not-utf8", "line\nbreak", "tab\there", "quote\"'", "back\\slash", strings.Repeat("n", 255)} {
		write(name, name, 0o644)
	}
	must(os.Symlink("hello", filepath.Join(root, "bin/hi")))
	must(os.Symlink("/nonexistent/dangling", filepath.Join(root, "dangling-absolute")))
	must(os.Symlink("../nowhere", filepath.Join(root, "nested/dangling-relative")))
	must(os.Symlink("/etc", filepath.Join(root, "absolute-dir")))
	must(os.Symlink("nested/a", filepath.Join(root, "link-to-dir")))
	must(os.Symlink(strings.Repeat("t", 1000), filepath.Join(root, "long-target")))
	must(os.Symlink("-> odd target with spaces\n", filepath.Join(root, "odd-target")))
}

// sum hashes what write writes.
func sum(write func(io.Writer)) [32]byte {
	h := sha256.New()
	write(h)
	var s [32]byte
	h.Sum(s[:0])
	return s
}

func TestDumpPathLikeNix(t *testing.T) {
	tmp := t.TempDir()
	tree := filepath.Join(tmp, "tree")
	if err := os.Mkdir(tree, 0o755); err != nil {
		t.Fatal(err)
	}
	makeTree(t, tree)

	// A 20 MiB file, streamed: neither side holds it.
	bigDir := filepath.Join(tmp, "big")
	os.Mkdir(bigDir, 0o755)
	f, err := os.Create(filepath.Join(bigDir, "blob"))
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(7, 8))
	chunk := make([]byte, 1<<20)
	for range 20 {
		for i := range chunk {
			chunk[i] = byte(rng.Uint32())
		}
		f.Write(chunk)
	}
	f.Write([]byte("odd tail")) // size not a multiple of 8
	f.Close()

	os.WriteFile(filepath.Join(tmp, "root-file"), []byte("just a file"), 0o755)
	os.WriteFile(filepath.Join(tmp, "root-empty-file"), nil, 0o644)
	os.Symlink("tree", filepath.Join(tmp, "root-symlink"))
	os.Mkdir(filepath.Join(tmp, "root-empty-dir"), 0o755)

	for _, name := range []string{"tree", "big", "root-file", "root-empty-file", "root-symlink", "root-symlink/", "root-empty-dir", "tree/./nested/../bin"} {
		t.Run(name, func(t *testing.T) {
			path := tmp + "/" + name // not cleaned: DumpPath must treat it as Nix does
			ours := sum(func(w io.Writer) {
				if err := nar.DumpPath(w, path); err != nil {
					t.Fatal(err)
				}
			})
			theirs := sum(func(w io.Writer) { nixtest.DumpTo(t, path, w) })
			if ours != theirs {
				var a, b bytes.Buffer
				nar.DumpPath(&a, path)
				nixtest.DumpTo(t, path, &b)
				t.Fatalf("DumpPath(%s) differs from nix-store --dump (%d vs %d bytes, first difference at %d)", name, a.Len(), b.Len(), firstDiff(a.Bytes(), b.Bytes()))
			}
		})
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

func TestDumpPathErrors(t *testing.T) {
	tmp := t.TempDir()
	fifo := filepath.Join(tmp, "dir", "fifo")
	os.Mkdir(filepath.Dir(fifo), 0o755)
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{filepath.Dir(fifo), filepath.Join(tmp, "absent")} {
		err := nar.DumpPath(io.Discard, path)
		if err == nil {
			t.Errorf("DumpPath(%s) succeeded", path)
		}
		if _, nixErr := nixtest.Try(t, nil, "nix-store", "--dump", path); nixErr == nil {
			t.Errorf("nix-store --dump %s succeeded, DumpPath says %v", path, err)
		}
	}
}

// TestReaderRealNARs reads what nix-store --dump prints for real store
// paths and for the test tree, compares every node with the file system,
// and writes the NAR again with the Writer, which must give the same bytes.
func TestReaderRealNARs(t *testing.T) {
	store := nixtest.NewStore(t)
	top := store.BuildSample(t)
	tree := filepath.Join(t.TempDir(), "tree")
	os.Mkdir(tree, 0o755)
	makeTree(t, tree)

	paths := []string{tree}
	for _, p := range store.Closure(t, top) {
		paths = append(paths, store.Physical(p))
	}
	for _, root := range paths {
		t.Run(filepath.Base(root), func(t *testing.T) {
			data := nixtest.Dump(t, root)
			r := nar.NewReader(bytes.NewReader(data))
			var rewritten bytes.Buffer
			w := nar.NewWriter(&rewritten)
			nodes := 0
			for {
				h, err := r.Next()
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				nodes++
				checkNode(t, root, h)
				if err := w.WriteHeader(h); err != nil {
					t.Fatal(err)
				}
				if h.Type == nar.TypeRegular {
					got, err := io.ReadAll(r)
					if err != nil {
						t.Fatal(err)
					}
					want, _ := os.ReadFile(filepath.Join(root, h.Path))
					if !bytes.Equal(got, want) {
						t.Errorf("%s: contents differ", h.Path)
					}
					w.Write(got)
				}
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(rewritten.Bytes(), data) {
				t.Errorf("the Writer gives %d bytes, nix %d, first difference at %d", rewritten.Len(), len(data), firstDiff(rewritten.Bytes(), data))
			}
			if n, err := nar.Validate(bytes.NewReader(data)); err != nil || n != uint64(len(data)) {
				t.Errorf("Validate = %d, %v; want %d", n, err, len(data))
			}
			if nodes < 1 {
				t.Error("no nodes")
			}
		})
	}
}

// checkNode compares a header with the file system.
func checkNode(t *testing.T, root string, h *nar.Header) {
	t.Helper()
	fi, err := os.Lstat(filepath.Join(root, h.Path))
	if err != nil {
		t.Fatalf("%s: %v", h.Path, err)
	}
	switch h.Type {
	case nar.TypeRegular:
		if !fi.Mode().IsRegular() || uint64(fi.Size()) != h.Size || h.Executable != (fi.Mode()&0o100 != 0) {
			t.Errorf("%s: header %+v, file %v %d bytes", h.Path, h, fi.Mode(), fi.Size())
		}
	case nar.TypeDirectory:
		if !fi.IsDir() {
			t.Errorf("%s: header %+v, file %v", h.Path, h, fi.Mode())
		}
	case nar.TypeSymlink:
		target, _ := os.Readlink(filepath.Join(root, h.Path))
		if target != h.LinkTarget {
			t.Errorf("%s: target %q, file system %q", h.Path, h.LinkTarget, target)
		}
	default:
		t.Errorf("%s: type %v", h.Path, h.Type)
	}
}

func TestReaderHeaders(t *testing.T) {
	data := archive(dir(
		entry("a", file("hello")),
		entry("b", dir(
			entry("c", exe("")),
			entry("d", link("../a")),
		)),
		entry("e", dir()),
		entry("f", exe("12345678")),
	))
	want := []nar.Header{
		{Path: "/", Type: nar.TypeDirectory},
		{Path: "/a", Type: nar.TypeRegular, Size: 5},
		{Path: "/b", Type: nar.TypeDirectory},
		{Path: "/b/c", Type: nar.TypeRegular, Executable: true},
		{Path: "/b/d", Type: nar.TypeSymlink, LinkTarget: "../a"},
		{Path: "/e", Type: nar.TypeDirectory},
		{Path: "/f", Type: nar.TypeRegular, Executable: true, Size: 8},
	}
	r := nar.NewReader(bytes.NewReader(data))
	for i, w := range want {
		h, err := r.Next()
		if err != nil {
			t.Fatalf("header %d: %v", i, err)
		}
		if *h != w {
			t.Fatalf("header %d = %+v, want %+v", i, *h, w)
		}
		if w.Path == "/f" {
			// Read part of the contents only: Next must skip the rest.
			var b [3]byte
			if n, err := r.Read(b[:]); n != 3 || err != nil || string(b[:]) != "123" {
				t.Fatalf("Read = %d, %v, %q", n, err, b)
			}
		}
		if w.Type != nar.TypeRegular {
			if n, err := r.Read(make([]byte, 1)); n != 0 || err != io.EOF {
				t.Fatalf("Read on %s = %d, %v; want io.EOF", w.Path, n, err)
			}
		}
	}
	for range 2 {
		if h, err := r.Next(); err != io.EOF {
			t.Fatalf("Next after the last node = %+v, %v; want io.EOF", h, err)
		}
	}
}

func TestReaderContents(t *testing.T) {
	contents := strings.Repeat("0123456789", 100001) // larger than the buffer, odd length
	r := nar.NewReader(bytes.NewReader(archive(file(contents))))
	h, err := r.Next()
	if err != nil || h.Size != uint64(len(contents)) {
		t.Fatalf("Next = %+v, %v", h, err)
	}
	var got bytes.Buffer
	buf := make([]byte, 1<<20)
	for _, n := range []int{1, 7, 100, 300000, 1 << 20} { // small and large reads
		m, err := r.Read(buf[:n])
		if err != nil {
			t.Fatal(err)
		}
		got.Write(buf[:m])
	}
	rest, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	got.Write(rest)
	if got.String() != contents {
		t.Fatalf("read %d bytes, want %d", got.Len(), len(contents))
	}
	if n, err := r.Read(buf); n != 0 || err != io.EOF {
		t.Fatalf("Read at the end = %d, %v", n, err)
	}
	if _, err := r.Next(); err != io.EOF {
		t.Fatalf("Next = %v, want io.EOF", err)
	}
}

// slowReader returns at most one byte per Read.
type slowReader struct{ r io.Reader }

func (s slowReader) Read(p []byte) (int, error) {
	if len(p) > 1 {
		p = p[:1]
	}
	return s.r.Read(p)
}

func TestReaderSlowSource(t *testing.T) {
	data := archive(dir(entry("a", file(strings.Repeat("x", 1000))), entry("b", link("a"))))
	n, err := nar.Validate(slowReader{bytes.NewReader(data)})
	if err != nil || n != uint64(len(data)) {
		t.Fatalf("Validate = %d, %v; want %d", n, err, len(data))
	}
}

func TestReaderHostile(t *testing.T) {
	pad := func(b []byte) []byte { return b }
	longName := strings.Repeat("n", 256)
	deep := file("x")
	for range 2100 {
		deep = dir(entry("d", deep))
	}
	valid := archive(file("hello"))
	tests := []struct {
		name       string
		data       []byte
		wantErr    string
		nixRejects bool // nix-store --restore refuses it too
	}{
		{"empty", nil, "unexpected EOF", true},
		{"truncated magic", valid[:10], "unexpected EOF", true},
		{"wrong magic", build("nix-archive-2", file("x")), "not a NAR", true},
		{"magic length", build("nix-archive-10", file("x")), "not a NAR", true},
		{"magic padding", append(append(build(uint64(13)), "nix-archive-1\x00\x00\x01"...), build(file("x"))...), "not a NAR", true},
		{"gzip", []byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, "not a NAR", true},
		{"no open", build("nix-archive-1", "type", "regular", "contents", "", ")"), "expected '(' opening a node", true},
		{"no type", build("nix-archive-1", "(", "contents", "", ")"), `expected "type"`, true},
		{"unknown type", build("nix-archive-1", "(", "type", "fifo", ")"), `unknown node type "fifo"`, true},
		{"regular without contents", build("nix-archive-1", "(", "type", "regular", ")"), `expected "contents"`, false},
		{"executable after contents", build("nix-archive-1", "(", "type", "regular", "contents", "x", "executable", "", ")"), `expected ')' closing the file`, false},
		{"executable value", build("nix-archive-1", "(", "type", "regular", "executable", "x", "contents", "", ")"), "executable marker", true},
		{"two types", build("nix-archive-1", "(", "type", "regular", "type", "regular", "contents", "", ")"), `expected "contents"`, true},
		{"contents truncated", valid[:len(valid)-20], "unexpected EOF", true},
		{"contents padding", append(build("nix-archive-1", "(", "type", "regular", "contents", uint64(1)), append([]byte("x\x00\x00\x00\x00\x00\x00\x01"), build(")")...)...), "non-zero padding", true},
		{"token padding", append(build("nix-archive-1", "(", uint64(4)), append([]byte("type\x00\x00\x01\x00"), build("regular", "contents", "", ")")...)...), "non-zero padding", true},
		{"huge string", build("nix-archive-1", "(", "type", uint64(1)<<62), "longer than", true},
		{"huge name", archive(dir([]any{"entry", "(", "name", uint64(1) << 40})), "longer than 255", true},
		{"huge contents", build("nix-archive-1", "(", "type", "regular", "contents", uint64(1)<<60, []byte("abc")), "unexpected EOF", true},
		{"no close", build("nix-archive-1", "(", "type", "regular", "contents", "x"), "unexpected EOF", true},
		{"symlink without target", build("nix-archive-1", "(", "type", "symlink", ")"), `expected "target"`, false},
		{"symlink empty target", archive(link("")), "empty symlink target", true},
		{"symlink NUL", archive(link("a\x00b")), "contains NUL", false},
		{"symlink long target", archive(link(strings.Repeat("t", 4096))), "longer than 4095", true},
		// Nix 2.8 means to refuse unsorted entries, but its check compares
		// with a variable reset for every entry (archive.cc), so it does not.
		{"unsorted", archive(dir(entry("b", file("")), entry("a", file("")))), `entry "a" after "b": not sorted`, false},
		{"unsorted bytes", archive(dir(entry("a", file("")), entry("B", file("")))), "not sorted", false},
		{"duplicate", archive(dir(entry("a", file("")), entry("a", file("")))), `duplicate entry "a"`, true},
		{"empty name", archive(dir(entry("", file("")))), "empty entry name", true},
		{"dot", archive(dir(entry(".", file("")))), `entry name "." is not allowed`, true},
		{"dotdot", archive(dir(entry("..", file("")))), `entry name ".." is not allowed`, true},
		{"slash", archive(dir(entry("a/b", file("")))), "contains '/'", true},
		{"NUL in name", archive(dir(entry("a\x00", file("")))), "contains NUL", true},
		{"long name", archive(dir(entry(longName, file("")))), "longer than 255", true},
		{"entry without name", archive(dir([]any{"entry", "(", "node", file(""), ")"})), `expected "name"`, true},
		{"entry unknown field", archive(dir([]any{"entry", "(", "name", "a", "size", "1", ")"})), `expected "node"`, true},
		{"entry not closed", archive(dir([]any{"entry", "(", "name", "a", "node", file(""), "entry"})), "closing the entry", true},
		{"unknown dir field", archive(dir([]any{"contents", ""})), `expected "entry" or ")"`, true},
		{"trailing data", append(pad(valid), 0), "trailing data", false},
		{"trailing NAR", append(pad(valid), valid...), "trailing data", false},
		{"too deep", archive(deep), "longer than 4095", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := nar.Validate(bytes.NewReader(tt.data))
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Validate = %v; want error containing %q", err, tt.wantErr)
			}
			if !strings.HasPrefix(err.Error(), "nar: ") {
				t.Fatalf("error %q does not start with \"nar: \"", err)
			}
			// Errors are sticky.
			r := nar.NewReader(bytes.NewReader(tt.data))
			var first error
			for first == nil {
				_, first = r.Next()
			}
			if _, again := r.Next(); again != first { //nolint:errorlint // the same error, not one like it
				t.Fatalf("Next after %v = %v", first, again)
			}
		})
	}
	t.Run("as nix", func(t *testing.T) {
		for _, tt := range tests {
			if !tt.nixRejects {
				continue
			}
			out := filepath.Join(t.TempDir(), "out")
			if _, err := nixtest.Try(t, tt.data, "nix-store", "--restore", out); err == nil {
				t.Errorf("%s: nix-store --restore accepts it", tt.name)
			}
		}
		// The check itself: nix restores a valid one.
		out := filepath.Join(t.TempDir(), "out")
		if _, err := nixtest.Try(t, valid, "nix-store", "--restore", out); err != nil {
			t.Fatal(err)
		}
	})
}

func TestWriterErrors(t *testing.T) {
	type step struct {
		h     *nar.Header
		write string
	}
	reg := func(p string, size uint64) step {
		return step{h: &nar.Header{Path: p, Type: nar.TypeRegular, Size: size}}
	}
	dirH := func(p string) step { return step{h: &nar.Header{Path: p, Type: nar.TypeDirectory}} }
	data := func(s string) step { return step{write: s} }
	tests := []struct {
		name    string
		steps   []step
		wantErr string
	}{
		{"empty archive", nil, "empty archive"},
		{"first not root", []step{reg("/a", 0)}, "want the root"},
		{"after root file", []step{reg("/", 0), reg("/a", 0)}, "after the root node is complete"},
		{"short contents", []step{dirH("/"), reg("/a", 3), data("ab"), reg("/b", 0)}, "1 bytes short"},
		{"short contents at close", []step{reg("/", 3), data("ab")}, "1 bytes short"},
		{"long contents", []step{reg("/", 1), data("ab")}, "more than the 1 left"},
		{"write outside a file", []step{dirH("/"), data("x")}, "outside a regular file"},
		{"unsorted", []step{dirH("/"), reg("/b", 0), reg("/a", 0)}, "does not sort after"},
		{"duplicate", []step{dirH("/"), reg("/a", 0), reg("/a", 0)}, "does not sort after"},
		{"child of a file", []step{dirH("/"), reg("/a", 0), reg("/a/b", 0)}, "is not open"},
		{"child of a closed dir", []step{dirH("/"), dirH("/a"), reg("/b", 0), reg("/a/c", 0)}, "is not open"},
		{"skipped level", []step{dirH("/"), reg("/a/b", 0)}, "is not open"},
		{"relative path", []step{dirH("/"), reg("a", 0)}, "not a path below the root"},
		{"trailing slash", []step{dirH("/"), reg("/a/", 0)}, "not a path below the root"},
		{"dot", []step{dirH("/"), reg("/.", 0)}, "not allowed"},
		{"empty name", []step{dirH("/"), reg("//a", 0)}, "not clean"},
		{"empty name inside", []step{dirH("/"), dirH("/a"), reg("/a//b", 0)}, "not clean"},
		{"NUL", []step{dirH("/"), reg("/a\x00", 0)}, "contains NUL"},
		{"long name", []step{dirH("/"), reg("/"+strings.Repeat("n", 256), 0)}, "longer than 255"},
		{"empty target", []step{{h: &nar.Header{Path: "/", Type: nar.TypeSymlink}}}, "empty symlink target"},
		{"bad type", []step{{h: &nar.Header{Path: "/"}}}, "unknown type"},
		{"dir with size", []step{{h: &nar.Header{Path: "/", Type: nar.TypeDirectory, Size: 1}}}, "directory with"},
		{"symlink executable", []step{{h: &nar.Header{Path: "/", Type: nar.TypeSymlink, LinkTarget: "x", Executable: true}}}, "symlink with"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := nar.NewWriter(io.Discard)
			var err error
			for _, s := range tt.steps {
				if s.h != nil {
					err = w.WriteHeader(s.h)
				} else {
					_, err = w.Write([]byte(s.write))
				}
				if err != nil {
					break
				}
			}
			if err == nil {
				err = w.Close()
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %v; want one containing %q", err, tt.wantErr)
			}
			if w.Close() == nil {
				t.Fatal("Close after an error succeeded")
			}
		})
	}
}

// TestWriterClosesDirectories writes headers that leave several directories
// open and compares with a NAR built by hand.
func TestWriterClosesDirectories(t *testing.T) {
	var buf bytes.Buffer
	w := nar.NewWriter(&buf)
	for _, h := range []nar.Header{
		{Path: "/", Type: nar.TypeDirectory},
		{Path: "/a", Type: nar.TypeDirectory},
		{Path: "/a/b", Type: nar.TypeDirectory},
		{Path: "/a/b/c", Type: nar.TypeSymlink, LinkTarget: "/x"},
		{Path: "/d", Type: nar.TypeRegular, Executable: true, Size: 3},
	} {
		if err := w.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := io.Copy(w, strings.NewReader("abc")); err != nil { // through ReadFrom
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	want := archive(dir(entry("a", dir(entry("b", dir(entry("c", link("/x")))))), entry("d", exe("abc"))))
	if !bytes.Equal(buf.Bytes(), want) {
		t.Fatalf("got %q\nwant %q", buf.Bytes(), want)
	}
}

func TestWriterReadFromTooLong(t *testing.T) {
	w := nar.NewWriter(io.Discard)
	w.WriteHeader(&nar.Header{Path: "/", Type: nar.TypeRegular, Size: 2})
	if _, err := io.Copy(w, strings.NewReader("abc")); err == nil {
		t.Fatal("io.Copy of 3 bytes into a 2-byte file succeeded")
	}
}

// failWriter fails after n bytes.
type failWriter struct{ n int }

func (f *failWriter) Write(p []byte) (int, error) {
	if len(p) > f.n {
		n := f.n
		f.n = 0
		return n, errors.New("disk full")
	}
	f.n -= len(p)
	return len(p), nil
}

func TestWriterUnderlyingError(t *testing.T) {
	tree := filepath.Join(t.TempDir(), "tree")
	os.Mkdir(tree, 0o755)
	makeTree(t, tree)
	err := nar.DumpPath(&failWriter{n: 100}, tree)
	if err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("DumpPath into a failing writer: %v", err)
	}
}

func FuzzReader(f *testing.F) {
	f.Add(archive(file("hello")))
	f.Add(archive(exe("")))
	f.Add(archive(link("/nix/store")))
	f.Add(archive(dir()))
	f.Add(archive(dir(entry("a", file("x")), entry("b", dir(entry("c", link("../a")))), entry("d", exe("12345678")))))
	f.Add(archive(dir(entry("b", file("")), entry("a", file("")))))
	f.Add(append(archive(file("")), 0))
	f.Fuzz(func(t *testing.T, data []byte) {
		// Whatever the Reader accepts is canonical: written again, it gives
		// the same bytes.
		r := nar.NewReader(bytes.NewReader(data))
		var out bytes.Buffer
		w := nar.NewWriter(&out)
		for {
			h, err := r.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				return
			}
			if err := w.WriteHeader(h); err != nil {
				t.Fatalf("WriteHeader(%+v) of a header the Reader returned: %v", h, err)
			}
			if _, err := io.Copy(w, r); err != nil {
				return // truncated contents: the Reader fails, as it should
			}
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out.Bytes(), data) {
			t.Fatalf("accepted a NAR that is not canonical:\n%q\nrewritten:\n%q", data, out.Bytes())
		}
		if n, err := nar.Validate(bytes.NewReader(data)); err != nil || n != uint64(len(data)) {
			t.Fatalf("Validate = %d, %v; want %d", n, err, len(data))
		}
	})
}
