//go:build unix

package daemon

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// narTrees makes file system trees of every kind of node and returns them
// by name.
func narTrees(t *testing.T) map[string]string {
	t.Helper()
	dir := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	write := func(p, content string, mode os.FileMode) {
		t.Helper()
		must(os.MkdirAll(filepath.Dir(p), 0o755))
		must(os.WriteFile(p, []byte(content), mode))
	}
	tree := filepath.Join(dir, "tree")
	write(filepath.Join(tree, "a"), "thirteen byte", 0o644) // padded
	write(filepath.Join(tree, "B"), "sixteen bytes!!!", 0o644)
	write(filepath.Join(tree, "bin", "run"), "#!/bin/sh\necho hi\n", 0o755)
	write(filepath.Join(tree, "empty-file"), "", 0o644)
	write(filepath.Join(tree, "deep", "er", "and", "deeper", "file"), strings.Repeat("x", 300000), 0o644)
	must(os.MkdirAll(filepath.Join(tree, "empty-dir"), 0o755))
	must(os.Symlink("bin/run", filepath.Join(tree, "link")))
	must(os.Symlink("/nonexistent/"+strings.Repeat("long/", 100), filepath.Join(tree, "dangling")))

	file := filepath.Join(dir, "file")
	write(file, "hello\n", 0o644)
	exe := filepath.Join(dir, "exe")
	write(exe, "#!/bin/sh\n", 0o755)
	link := filepath.Join(dir, "link")
	must(os.Symlink("file", link))
	empty := filepath.Join(dir, "empty")
	must(os.Mkdir(empty, 0o755))
	return map[string]string{"tree": tree, "file": file, "executable": exe, "symlink": link, "empty directory": empty}
}

// dumpNARs returns what nix-store --dump prints for each of narTrees.
func dumpNARs(t *testing.T) map[string][]byte {
	t.Helper()
	nars := map[string][]byte{}
	for name, p := range narTrees(t) {
		nars[name] = []byte(runNix(t, nil, "nix-store", "--dump", p))
	}
	return nars
}

// copyBuf is copyAll's buffer, shared by the tests, which do not run in
// parallel.
var copyBuf = make([]byte, narCopyBufSize)

// copyAll runs copyNAR on in and returns what it wrote and left unread.
func copyAll(in []byte) (out, rest []byte, err error) {
	var buf bytes.Buffer
	rest, err = copyTo(&buf, in)
	return buf.Bytes(), rest, err
}

// copyTo runs copyNAR on in, writing to w, and returns what it left unread.
// Its small buffers make it cross buffer boundaries everywhere.
func copyTo(w io.Writer, in []byte) (rest []byte, err error) {
	r := bufio.NewReaderSize(bytes.NewReader(in), 16)
	err = copyNAR(r, bufio.NewWriterSize(w, 16), copyBuf, func() error { return errors.New("onError called") })
	rest, _ = io.ReadAll(r)
	return rest, err
}

// TestCopyNAR: archives nix-store --dump printed are copied byte for byte,
// and not one byte more is read.
func TestCopyNAR(t *testing.T) {
	trailer := []byte("the next reply\x00\x00")
	for name, nar := range dumpNARs(t) {
		t.Run(name, func(t *testing.T) {
			out, rest, err := copyAll(append(bytes.Clone(nar), trailer...))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out, nar) {
				t.Errorf("copied %d bytes, not the %d of the archive", len(out), len(nar))
			}
			if !bytes.Equal(rest, trailer) {
				t.Errorf("left %q unread, want %q", rest, trailer)
			}
		})
	}
}

// TestCopyNARErrorInPlace: an error where the archive or its root node was
// due writes nothing, however small the buffers.
func TestCopyNARErrorInPlace(t *testing.T) {
	errWord := binary.LittleEndian.AppendUint64(nil, stderrError)
	for name, in := range map[string][]byte{
		"in place of the archive":   errWord,
		"in place of the root node": append(narOf(narMagic), errWord...),
	} {
		var out bytes.Buffer
		_, err := copyTo(&out, in)
		if err == nil || err.Error() != "onError called" {
			t.Errorf("%s: error %v, want onError's", name, err)
		}
		if out.Len() != 0 {
			t.Errorf("%s: wrote %q", name, out.Bytes())
		}
	}
}

func TestCopyNARTruncated(t *testing.T) {
	nar := dumpNARs(t)["tree"]
	for cut := range len(nar) {
		if cut > 4096 && cut < len(nar)-4096 && cut%997 != 0 {
			continue // the long file's middle: a sample will do
		}
		if _, err := copyTo(io.Discard, nar[:cut]); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("archive cut after %d of %d bytes: %v, want io.ErrUnexpectedEOF", cut, len(nar), err)
		}
	}
}

// narOf encodes tokens as an archive does.
func narOf(tokens ...string) []byte {
	return encode(func(w *writer) {
		for _, tok := range tokens {
			w.string(tok)
		}
	})
}

func nested(depth int) []byte {
	tokens := []string{narMagic}
	for range depth {
		tokens = append(tokens, "(", "type", "directory", "entry", "(", "name", "d", "node")
	}
	tokens = append(tokens, "(", "type", "directory", ")")
	for range depth {
		tokens = append(tokens, ")", ")")
	}
	return narOf(tokens...)
}

func TestCopyNARMalformed(t *testing.T) {
	file := func(name string) []string {
		return []string{"entry", "(", "name", name, "node", "(", "type", "regular", "contents", "", ")", ")"}
	}
	dir := func(entries ...[]string) []byte {
		tokens := []string{narMagic, "(", "type", "directory"}
		for _, e := range entries {
			tokens = append(tokens, e...)
		}
		return narOf(append(tokens, ")")...)
	}
	hugeToken := append(narOf(narMagic), binary.LittleEndian.AppendUint64(nil, 1<<50)...)
	badPadding := append(narOf(narMagic, "(", "type", "regular", "contents"), binary.LittleEndian.AppendUint64(nil, 1)...)
	badPadding = append(badPadding, 'x', 0, 0, 1, 0, 0, 0, 0)

	if _, _, err := copyAll(dir(file("a"), file("b"))); err != nil {
		t.Fatalf("a well-formed archive: %v", err)
	}
	if _, _, err := copyAll(nested(maxNARDepth)); err != nil {
		t.Fatalf("an archive nested %d deep: %v", maxNARDepth, err)
	}
	for name, nar := range map[string][]byte{
		"other magic":          narOf("nix-archive-2", "(", "type", "regular", "contents", "", ")"),
		"no magic":             narOf("(", "type", "regular", "contents", "", ")"),
		"no (":                 narOf(narMagic, "type", "regular", "contents", "", ")"),
		"fifo":                 narOf(narMagic, "(", "type", "fifo", ")"),
		"executable flag":      narOf(narMagic, "(", "type", "regular", "executable", "yes", "contents", "", ")"),
		"contents tag":         narOf(narMagic, "(", "type", "regular", "content", "", ")"),
		"no )":                 narOf(narMagic, "(", "type", "regular", "contents", "", "("),
		"empty symlink":        narOf(narMagic, "(", "type", "symlink", "target", "", ")"),
		"symlink tag":          narOf(narMagic, "(", "type", "symlink", "link", "x", ")"),
		"entry tag":            narOf(narMagic, "(", "type", "directory", "entri", ")"),
		"unsorted":             dir(file("b"), file("a")),
		"duplicate":            dir(file("a"), file("a")),
		"empty name":           dir(file("")),
		"dot":                  dir(file(".")),
		"dot dot":              dir(file("..")),
		"slash":                dir(file("a/b")),
		"NUL":                  dir(file("a\x00b")),
		"huge token":           hugeToken,
		"non-zero padding":     badPadding,
		"too deep":             nested(maxNARDepth + 1),
		"long node type token": narOf(narMagic, "(", "type", strings.Repeat("r", 100)),
	} {
		if _, _, err := copyAll(nar); !errors.Is(err, ErrProtocol) {
			t.Errorf("%s: %v, want ErrProtocol", name, err)
		}
	}
}

// FuzzCopyNAR: whatever the bytes, copyNAR does not panic, and what it
// copies is exactly what it consumed.
func FuzzCopyNAR(f *testing.F) {
	f.Add(narOf(narMagic, "(", "type", "regular", "executable", "", "contents", "hi", ")"))
	f.Add(narOf(narMagic, "(", "type", "directory", "entry", "(", "name", "a", "node", "(", "type", "symlink", "target", "b", ")", ")", ")"))
	f.Add(nested(3))
	f.Fuzz(func(t *testing.T, in []byte) {
		out, rest, err := copyAll(in)
		if err == nil && !bytes.Equal(append(bytes.Clone(out), rest...), in) {
			t.Fatalf("copied %d bytes and left %d of %d, not a split of the input", len(out), len(rest), len(in))
		}
		if len(out) > len(in) {
			t.Fatalf("copied %d bytes of %d", len(out), len(in))
		}
	})
}

func TestNarFromPathFake(t *testing.T) {
	nar := dumpNARs(t)["tree"]
	t.Run("streams and goes on", func(t *testing.T) {
		c := pipeConn(t, v(34), func(f *fake) {
			f.requestPath(opNarFromPath, pathA)
			f.word(stderrNext)
			f.str("log")
			f.last()
			f.raw(nar)
			callIsValid.req(f, v(34))
			f.last()
			f.word(1)
		})
		defer c.Close()
		var out bytes.Buffer
		if err := c.NarFromPath(testCtx(t), pathA, &out); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out.Bytes(), nar) {
			t.Errorf("NarFromPath wrote %d bytes, not the %d of the archive", out.Len(), len(nar))
		}
		if ok, err := c.IsValidPath(testCtx(t), pathA); !ok || err != nil {
			t.Errorf("IsValidPath after NarFromPath = %v, %v", ok, err)
		}
	})
	for _, tc := range []struct {
		name     string
		ver      Version
		archive  func(*fake) // what comes in place of the archive
		notFound bool
		message  string
	}{
		{"not valid", v(38), func(f *fake) { writeNewError(f, "path '\x1b[35;1m"+pathA+"\x1b[0m' is not valid") }, true, "path '" + pathA + "' is not valid"},
		{"vanished, old format", v(25), func(f *fake) {
			f.word(stderrError)
			f.str("error: getting status of '" + pathA + "': No such file or directory")
			f.word(1)
		}, true, "error: getting status of '" + pathA + "': No such file or directory"},
		{"unreadable", v(34), func(f *fake) { writeNewError(f, "opening file '"+pathA+"/x': Permission denied") }, false, "opening file '" + pathA + "/x': Permission denied"},
		{"missing, after the magic", v(34), func(f *fake) {
			// Daemons before Nix 2.33 send the magic, then look at the path.
			f.str(narMagic)
			writeNewError(f, "getting status of '"+pathA+"': No such file or directory")
		}, true, "getting status of '" + pathA + "': No such file or directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := pipeConn(t, tc.ver, func(f *fake) {
				f.requestPath(opNarFromPath, pathA)
				f.last()
				tc.archive(f)
			})
			defer c.Close()
			var out bytes.Buffer
			err := c.NarFromPath(testCtx(t), pathA, &out)
			var de *DaemonError
			if !errors.As(err, &de) || de.Message != tc.message {
				t.Fatalf("error %v, want a DaemonError %q", err, tc.message)
			}
			if errors.Is(err, ErrNotFound) != tc.notFound {
				t.Errorf("errors.Is(%v, ErrNotFound) = %v, want %v", err, !tc.notFound, tc.notFound)
			}
			if out.Len() != 0 {
				t.Errorf("wrote %d bytes", out.Len())
			}
			if c.usable() {
				t.Error("connection usable after an error in place of the archive, which the daemon hangs up after")
			}
		})
	}
	t.Run("error inside the archive", func(t *testing.T) {
		c := pipeConn(t, v(34), func(f *fake) {
			f.requestPath(opNarFromPath, pathA)
			f.last()
			f.raw(narOf(narMagic, "(", "type", "directory", "entry", "(", "name", "a", "node"))
			writeNewError(f, "opening directory '"+pathA+"/a': Permission denied")
		})
		defer c.Close()
		err := c.NarFromPath(testCtx(t), pathA, io.Discard)
		var de *DaemonError
		if !errors.As(err, &de) || errors.Is(err, ErrNotFound) {
			t.Fatalf("error %v, want a DaemonError that is not ErrNotFound", err)
		}
		if c.usable() {
			t.Error("connection usable after an error inside an archive")
		}
	})
	t.Run("writer fails", func(t *testing.T) {
		c := pipeConn(t, v(34), func(f *fake) {
			f.requestPath(opNarFromPath, pathA)
			f.last()
			f.raw(nar)
		})
		defer c.Close()
		errFull := errors.New("disk full")
		err := c.NarFromPath(testCtx(t), pathA, &failingWriter{left: 1000, err: errFull})
		if !errors.Is(err, errFull) {
			t.Fatalf("error %v, want the writer's", err)
		}
		if c.usable() {
			t.Error("connection usable after an archive was left half read")
		}
	})
	t.Run("malformed", func(t *testing.T) {
		c := pipeConn(t, v(34), func(f *fake) {
			f.requestPath(opNarFromPath, pathA)
			f.last()
			f.raw(narOf(narMagic, "(", "type", "fifo", ")"))
		})
		defer c.Close()
		if err := c.NarFromPath(testCtx(t), pathA, io.Discard); !errors.Is(err, ErrProtocol) {
			t.Fatalf("error %v, want ErrProtocol", err)
		}
	})
}

type failingWriter struct {
	left int
	err  error
}

func (w *failingWriter) Write(p []byte) (int, error) {
	if len(p) > w.left {
		n := w.left
		w.left = 0
		return n, w.err
	}
	w.left -= len(p)
	return len(p), nil
}
