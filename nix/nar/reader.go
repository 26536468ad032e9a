package nar

import (
	"encoding/binary"
	"fmt"
	"io"
)

// readBufSize is the Reader's buffer. Contents reads of at least this size
// bypass it and go straight to the underlying reader.
const readBufSize = 128 << 10

// Reader reads a NAR stream and validates it as it goes: the magic, token
// structure, padding (zero bytes), entry names (not empty, ".", "..", no '/'
// or NUL), entries strictly sorted and unique, string lengths bounded.
type Reader struct {
	src        io.Reader
	buf        []byte // buffered input is buf[start:end]
	start, end int
	srcErr     error  // error from src once it returned one (io.EOF included)
	off        uint64 // bytes of the archive consumed so far
	err        error  // sticky error; io.EOF once the archive is done

	started bool
	state   readState
	dirs    []dirFrame // the open directories, innermost last
	// The current regular file: contents not yet read, and the padding that
	// follows them.
	left uint64
	pad  int
}

// dirFrame is an open directory.
type dirFrame struct {
	path string
	prev string // the name of the previous entry
}

// readState says where the Reader stands after the header Next returned.
type readState uint8

const (
	stateDirOpen    readState = iota // read a directory's next entry or its end
	stateInFile                      // inside a regular file's contents
	stateNodeClosed                  // a node was read up to its ")"
)

// NewReader returns a Reader reading from r.
func NewReader(r io.Reader) *Reader {
	return &Reader{src: r, buf: make([]byte, readBufSize)}
}

// Next advances to the next node and returns its header; io.EOF after the
// whole archive was read and found well-formed (trailing bytes after the
// root node are an error). The contents of a regular file are read with
// Read before the next call to Next (unread contents are skipped).
func (r *Reader) Next() (*Header, error) {
	if r.err != nil {
		return nil, r.err
	}
	h, err := r.next()
	if err != nil {
		r.err = err
		return nil, err
	}
	return h, nil
}

func (r *Reader) next() (*Header, error) {
	if !r.started {
		r.started = true
		if err := r.magic(); err != nil {
			return nil, err
		}
		return r.node("/")
	}
	if r.state == stateInFile {
		if err := r.finishFile(); err != nil {
			return nil, err
		}
		r.state = stateNodeClosed
	}
	for {
		if r.state == stateNodeClosed {
			if len(r.dirs) == 0 {
				return nil, r.finishArchive()
			}
			if err := r.expect(tokClose, "')' closing the entry"); err != nil {
				return nil, err
			}
			r.state = stateDirOpen
		}
		// In a directory: another entry, or its end.
		dir := &r.dirs[len(r.dirs)-1]
		tok, err := r.token()
		if err != nil {
			return nil, err
		}
		switch string(tok) {
		case tokClose:
			r.dirs = r.dirs[:len(r.dirs)-1]
			r.state = stateNodeClosed
			continue
		case tokEntry:
		default:
			return nil, r.errorf("expected \"entry\" or \")\" in directory %q, got %q", dir.path, tok)
		}
		if err := r.expect(tokOpen, "'(' opening the entry"); err != nil {
			return nil, err
		}
		if err := r.expect(tokName, "\"name\""); err != nil {
			return nil, err
		}
		name, err := r.str(maxNameLen, "entry name")
		if err != nil {
			return nil, err
		}
		if err := checkName(name); err != nil {
			return nil, r.errorf("in directory %q: %v", dir.path, err)
		}
		if dir.prev != "" && name <= dir.prev {
			if name == dir.prev {
				return nil, r.errorf("in directory %q: duplicate entry %q", dir.path, name)
			}
			return nil, r.errorf("in directory %q: entry %q after %q: not sorted", dir.path, name, dir.prev)
		}
		dir.prev = name
		p := childPath(dir.path, name)
		if len(p) > maxPathLen {
			return nil, r.errorf("path of %d bytes, longer than %d", len(p), maxPathLen)
		}
		if err := r.expect(tokNode, "\"node\""); err != nil {
			return nil, err
		}
		return r.node(p)
	}
}

// node reads a node's header up to its contents (regular file), its end
// (symlink) or its first entry (directory).
func (r *Reader) node(path string) (*Header, error) {
	if err := r.expect(tokOpen, "'(' opening a node"); err != nil {
		return nil, err
	}
	if err := r.expect(tokType, "\"type\""); err != nil {
		return nil, err
	}
	tok, err := r.token()
	if err != nil {
		return nil, err
	}
	h := &Header{Path: path}
	switch string(tok) {
	case tokRegular:
		h.Type = TypeRegular
		tok, err := r.token()
		if err != nil {
			return nil, err
		}
		if string(tok) == tokExec {
			h.Executable = true
			v, err := r.token()
			if err != nil {
				return nil, err
			}
			if len(v) != 0 {
				return nil, r.errorf("%q: executable marker has value %q, want \"\"", path, v)
			}
			if tok, err = r.token(); err != nil {
				return nil, err
			}
		}
		if string(tok) != tokContents {
			return nil, r.errorf("%q: expected \"contents\", got %q", path, tok)
		}
		if h.Size, err = r.uint64(); err != nil {
			return nil, err
		}
		r.left, r.pad = h.Size, padLen(h.Size)
		r.state = stateInFile
	case tokSymlink:
		h.Type = TypeSymlink
		if err := r.expect(tokTarget, "\"target\""); err != nil {
			return nil, err
		}
		if h.LinkTarget, err = r.str(maxTargetLen, "symlink target"); err != nil {
			return nil, err
		}
		if err := checkTarget(h.LinkTarget); err != nil {
			return nil, r.errorf("%q: %v", path, err)
		}
		if err := r.expect(tokClose, "')' closing the symlink"); err != nil {
			return nil, err
		}
		r.state = stateNodeClosed
	case tokDirectory:
		h.Type = TypeDirectory
		r.dirs = append(r.dirs, dirFrame{path: path})
		r.state = stateDirOpen
	default:
		return nil, r.errorf("%q: unknown node type %q", path, tok)
	}
	return h, nil
}

// magic reads the archive's magic string.
func (r *Reader) magic() error {
	b, err := r.bytes(8+len(magic)+padLen(uint64(len(magic))), "the magic")
	if err != nil {
		return err
	}
	if binary.LittleEndian.Uint64(b) != uint64(len(magic)) || string(b[8:8+len(magic)]) != magic || b[len(b)-1] != 0 || b[len(b)-2] != 0 || b[len(b)-3] != 0 {
		r.off = 0
		return r.errorf("not a NAR: no %q magic at the start", magic)
	}
	return nil
}

// finishFile skips what is left of the current file's contents and reads
// its padding and ")".
func (r *Reader) finishFile() error {
	if err := r.skip(r.left); err != nil {
		return err
	}
	r.left = 0
	if err := r.padding(r.pad); err != nil {
		return err
	}
	r.pad = 0
	return r.expect(tokClose, "')' closing the file")
}

// finishArchive checks that nothing follows the root node.
func (r *Reader) finishArchive() error {
	if r.start == r.end && r.srcErr == nil {
		r.fillAtLeast(1)
	}
	if r.start < r.end {
		return r.errorf("trailing data after the archive")
	}
	if r.srcErr != io.EOF {
		return r.errorf("after the archive: %w", r.srcErr)
	}
	return io.EOF
}

// Read reads the current regular file's contents.
func (r *Reader) Read(p []byte) (int, error) {
	if r.state != stateInFile || r.err != nil {
		if r.err != nil && r.err != io.EOF {
			return 0, r.err
		}
		return 0, io.EOF
	}
	if r.left == 0 {
		return 0, io.EOF
	}
	if uint64(len(p)) > r.left {
		p = p[:r.left]
	}
	if len(p) == 0 {
		return 0, nil
	}
	var n int
	switch {
	case r.start < r.end:
		n = copy(p, r.buf[r.start:r.end])
		r.start += n
	case len(p) >= len(r.buf) && r.srcErr == nil:
		n, r.srcErr = r.src.Read(p)
	default:
		r.fillAtLeast(1)
		n = copy(p, r.buf[r.start:r.end])
		r.start += n
	}
	r.left -= uint64(n)
	r.off += uint64(n)
	if n == 0 && r.srcErr != nil {
		r.err = r.readError(r.srcErr, "file contents")
		return 0, r.err
	}
	return n, nil
}

// Validate reads a whole NAR from r and reports its size in bytes and the
// first structural error.
func Validate(r io.Reader) (uint64, error) {
	nr := NewReader(r)
	for {
		_, err := nr.Next()
		if err == io.EOF {
			return nr.off, nil
		}
		if err != nil {
			return nr.off, err
		}
	}
}

// errorf makes an error that says where in the archive it was found.
func (r *Reader) errorf(format string, args ...any) error {
	return fmt.Errorf("nar: at byte %d: %w", r.off, fmt.Errorf(format, args...))
}

// readError reports that src failed (or ended) while reading what.
func (r *Reader) readError(err error, what string) error {
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return r.errorf("reading %s: %w", what, err)
}

// fillAtLeast reads from src until at least n bytes are buffered or src
// fails; n must not exceed the buffer.
func (r *Reader) fillAtLeast(n int) {
	if r.end-r.start >= n {
		return
	}
	if r.start > 0 && len(r.buf)-r.start < n {
		r.end = copy(r.buf, r.buf[r.start:r.end])
		r.start = 0
	}
	empty := 0
	for r.end-r.start < n && r.srcErr == nil {
		m, err := r.src.Read(r.buf[r.end:])
		r.end += m
		if err != nil {
			r.srcErr = err
		} else if m == 0 {
			if empty++; empty >= 100 {
				r.srcErr = io.ErrNoProgress
			}
		}
	}
}

// bytes consumes n buffered bytes (n must not exceed the buffer) and
// returns them; they stay valid until the next read.
func (r *Reader) bytes(n int, what string) ([]byte, error) {
	r.fillAtLeast(n)
	if r.end-r.start < n {
		r.off += uint64(r.end - r.start)
		r.start = r.end
		return nil, r.readError(r.srcErr, what)
	}
	b := r.buf[r.start : r.start+n]
	r.start += n
	r.off += uint64(n)
	return b, nil
}

// uint64 reads a little-endian 64-bit number.
func (r *Reader) uint64() (uint64, error) {
	b, err := r.bytes(8, "a number")
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(b), nil
}

// padding reads n padding bytes, which must be zero.
func (r *Reader) padding(n int) error {
	if n == 0 {
		return nil
	}
	b, err := r.bytes(n, "padding")
	if err != nil {
		return err
	}
	for _, c := range b {
		if c != 0 {
			r.off -= uint64(n)
			return r.errorf("non-zero padding % x", b)
		}
	}
	return nil
}

// rawStr reads a string of at most max bytes and its padding; the result
// stays valid until the next read.
func (r *Reader) rawStr(max int, what string) ([]byte, error) {
	at := r.off
	n, err := r.uint64()
	if err != nil {
		return nil, err
	}
	if n > uint64(max) {
		r.off = at
		return nil, r.errorf("%s of %d bytes, longer than %d", what, n, max)
	}
	b, err := r.bytes(int(n), what)
	if err != nil {
		return nil, err
	}
	if err := r.padding(padLen(n)); err != nil {
		return nil, err
	}
	return b, nil
}

// token reads a short string of the format's syntax.
func (r *Reader) token() ([]byte, error) { return r.rawStr(maxTokenLen, "token") }

// str reads a string of at most max bytes into a new string.
func (r *Reader) str(max int, what string) (string, error) {
	b, err := r.rawStr(max, what)
	return string(b), err
}

// expect reads a token that must be want.
func (r *Reader) expect(want, what string) error {
	at := r.off
	tok, err := r.rawStr(maxTokenLen, what)
	if err != nil {
		return err
	}
	if string(tok) != want {
		r.off = at
		return r.errorf("expected %s, got %q", what, tok)
	}
	return nil
}

// skip discards n bytes of contents.
func (r *Reader) skip(n uint64) error {
	for n > 0 {
		if r.start == r.end {
			if r.srcErr != nil {
				return r.readError(r.srcErr, "file contents")
			}
			r.start, r.end = 0, 0
			r.fillAtLeast(1)
			continue
		}
		m := uint64(r.end - r.start)
		if m > n {
			m = n
		}
		r.start += int(m)
		r.off += m
		n -= m
	}
	return nil
}
