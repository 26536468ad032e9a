package nardump_test

import (
	"bytes"
	"io"
	"math/rand/v2"
	"os"
	"testing"

	"github.com/nixcache/nixcache/nix/nardump"
)

// fileWriter is a writer with a ReadFrom, as a TCP connection has: it
// counts the bytes that reached it as an open file (what sendfile would
// send) apart from those written.
type fileWriter struct {
	bytes.Buffer
	fromFile int64
}

func (w *fileWriter) ReadFrom(r io.Reader) (int64, error) {
	if lr, ok := r.(*io.LimitedReader); ok {
		if _, ok := lr.R.(*os.File); ok {
			n, err := w.Buffer.ReadFrom(r)
			w.fromFile += n
			return n, err
		}
	}
	return w.Buffer.ReadFrom(r)
}

// TestSendTo checks that SendTo writes the same bytes as Read, from any
// offset and for any length, and that it hands the writer the contents of
// large files as files.
func TestSendTo(t *testing.T) {
	// lib/libx.so.1.2 is just under SendMin, lib/big well over it.
	tree := makeTree(t, t.TempDir(), nardump.SendMin-1, 9<<20+3)
	want := reference(t, tree)
	total := uint64(len(want))
	rng := rand.New(rand.NewPCG(3, 4))
	type span struct{ off, n uint64 }
	spans := []span{{0, total}, {0, 1}, {total - 1, 1}, {1, total - 1}}
	for range 40 {
		off := rng.Uint64N(total)
		spans = append(spans, span{off, 1 + rng.Uint64N(total-off)})
	}
	for _, s := range spans {
		r, err := nardump.Open(tree, s.off)
		if err != nil {
			t.Fatal(err)
		}
		var w fileWriter
		befores := 0
		sent, err := r.SendTo(&w, s.n, make([]byte, 64<<10), func() { befores++ })
		r.Close()
		if err != nil || sent != s.n {
			t.Fatalf("SendTo from %d, %d bytes: sent %d, %v", s.off, s.n, sent, err)
		}
		if got := w.Bytes(); !bytes.Equal(got, want[s.off:s.off+s.n]) {
			t.Fatalf("SendTo from %d, %d bytes: first difference at %d", s.off, s.n, firstDiff(got, want[s.off:s.off+s.n]))
		}
		if befores == 0 {
			t.Errorf("SendTo from %d, %d bytes: before never ran", s.off, s.n)
		}
		if s.off == 0 && s.n == total && w.fromFile != 9<<20+3 {
			t.Errorf("whole archive: %d bytes reached the writer as a file, want the big file's %d", w.fromFile, 9<<20+3)
		}
	}

	// Asking for more than the archive holds is an error, after all of it.
	r, err := nardump.Open(tree, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var w fileWriter
	sent, err := r.SendTo(&w, total+10, make([]byte, 4096), nil)
	if err != io.ErrUnexpectedEOF || sent != total || !bytes.Equal(w.Bytes(), want) {
		t.Errorf("SendTo past the end: sent %d of %d, %v; want all of it and io.ErrUnexpectedEOF", sent, total, err)
	}
}
