package daemon

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// The worker protocol is a stream of 64-bit little-endian words. A string
// is its length as a word, its bytes, then zero bytes up to a multiple of 8.
// A list is its count as a word, then its elements. A bool is a word, 0 or
// not. Nothing on the wire says how long a reply is, so every length read
// is checked against a limit before anything is allocated for it.

// Limits on what the daemon may send, so that a broken or hostile socket
// cannot make us allocate without bound.
const (
	// maxString bounds store paths, hashes, signatures, content addresses,
	// version strings and NAR tokens.
	maxString = 64 << 10
	// maxMessage bounds log lines, activity texts and error messages.
	maxMessage = 1 << 20
	// maxPaths bounds lists of store paths (a large store has a few
	// million).
	maxPaths = 10_000_000
	// maxSmallList bounds every other list: signatures, protocol features,
	// log fields, error traces.
	maxSmallList = 4096
)

// ErrProtocol is wrapped by every error about the bytes the daemon sent:
// a bad magic number, an oversize string or list, non-zero padding, an
// unknown message. A Conn that returned it is closed.
var ErrProtocol = errors.New("nix daemon protocol error")

// protocolErrorf returns an error wrapping ErrProtocol.
func protocolErrorf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrProtocol, fmt.Sprintf(format, args...))
}

// reader decodes protocol values from a buffered connection.
type reader struct {
	r       *bufio.Reader
	scratch [8]byte
}

// uint64 reads one word. A stream that ends inside a word, or before a
// reply the daemon owed us, is io.ErrUnexpectedEOF.
func (r *reader) uint64() (uint64, error) {
	if _, err := io.ReadFull(r.r, r.scratch[:]); err != nil {
		return 0, unexpectedEOF(err)
	}
	return binary.LittleEndian.Uint64(r.scratch[:]), nil
}

// bool reads a word as Nix does: anything but 0 is true.
func (r *reader) bool() (bool, error) {
	n, err := r.uint64()
	return n != 0, err
}

// bytes reads a string of at most max bytes; what names the value in
// errors.
func (r *reader) bytes(max int, what string) ([]byte, error) {
	n, err := r.uint64()
	if err != nil {
		return nil, err
	}
	if n > uint64(max) {
		return nil, protocolErrorf("%s is %d bytes, more than the limit of %d", what, n, max)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r.r, b); err != nil {
		return nil, unexpectedEOF(err)
	}
	if err := r.padding(n); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return b, nil
}

// skip reads a string of at most max bytes and drops it.
func (r *reader) skip(max int, what string) error {
	n, err := r.uint64()
	if err != nil {
		return err
	}
	if n > uint64(max) {
		return protocolErrorf("%s is %d bytes, more than the limit of %d", what, n, max)
	}
	if _, err := r.r.Discard(int(n)); err != nil {
		return unexpectedEOF(err)
	}
	if err := r.padding(n); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// string reads a string of at most max bytes.
func (r *reader) string(max int, what string) (string, error) {
	b, err := r.bytes(max, what)
	return string(b), err
}

// padding reads the zero bytes that follow a string of n bytes.
func (r *reader) padding(n uint64) error {
	pad := padLen(n)
	if pad == 0 {
		return nil
	}
	b := r.scratch[:pad]
	if _, err := io.ReadFull(r.r, b); err != nil {
		return unexpectedEOF(err)
	}
	for _, c := range b {
		if c != 0 {
			return protocolErrorf("non-zero padding after a string")
		}
	}
	return nil
}

// count reads a list length of at most max.
func (r *reader) count(max int, what string) (int, error) {
	n, err := r.uint64()
	if err != nil {
		return 0, err
	}
	if n > uint64(max) {
		return 0, protocolErrorf("%s has %d elements, more than the limit of %d", what, n, max)
	}
	return int(n), nil
}

// strings reads a list of at most maxCount strings of at most maxLen bytes
// each. The slice grows as elements arrive, so a count that the stream
// does not back costs nothing.
func (r *reader) strings(maxCount, maxLen int, what string) ([]string, error) {
	n, err := r.count(maxCount, what)
	if err != nil {
		return nil, err
	}
	list := make([]string, 0, min(n, 1024))
	for range n {
		s, err := r.string(maxLen, what+" element")
		if err != nil {
			return nil, err
		}
		list = append(list, s)
	}
	return list, nil
}

// unexpectedEOF turns a clean end of stream, which can only come where the
// daemon still owed us bytes, into io.ErrUnexpectedEOF.
func unexpectedEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// padLen is the number of zero bytes after a string of n bytes.
func padLen(n uint64) int { return int(-n & 7) }

// writer encodes protocol values into a buffered connection; the caller
// flushes once the request is complete.
type writer struct {
	w       *bufio.Writer
	scratch [8]byte
}

func (w *writer) uint64(n uint64) {
	binary.LittleEndian.PutUint64(w.scratch[:], n)
	w.w.Write(w.scratch[:]) // bufio.Writer keeps the first error for Flush
}

func (w *writer) bool(b bool) {
	if b {
		w.uint64(1)
	} else {
		w.uint64(0)
	}
}

func (w *writer) string(s string) {
	w.uint64(uint64(len(s)))
	w.w.WriteString(s)
	var zero [8]byte
	w.w.Write(zero[:padLen(uint64(len(s)))])
}

func (w *writer) strings(list []string) {
	w.uint64(uint64(len(list)))
	for _, s := range list {
		w.string(s)
	}
}
