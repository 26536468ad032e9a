// Package nardump reads the NAR serialisation of a file system tree (a path
// of the host's Nix store), byte for byte as nix-store --dump writes it,
// starting at any offset of the archive.
//
// It differs from nar.DumpPath in what serving a store path needs: it is a
// Reader (it fills the caller's buffer, so file contents go from the page
// cache straight into the gRPC chunk, with no copy through an intermediate
// buffer and no large buffer allocated per archive), and SendTo hands large
// files' contents to a socket as files (sendfile); and it starts at an
// offset without reading what comes before: files that end before the
// offset are only lstat'ed, the file the offset falls in is opened and
// seeked. Nothing is hashed: the NAR hash is the catalogue's, and Nix
// checks it on arrival.
//
// The tests check the output against nar.DumpPath and, through the e2e
// tests, against the real nix-store --dump.
package nardump

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
)

// magic starts every NAR; the other tokens are written where they occur.
const magic = "nix-archive-1"

// frame is a directory being dumped: its entries, sorted, and the next one.
type frame struct {
	dir   string
	names []string
	next  int
}

// Reader reads the NAR of one tree. It is not safe for concurrent use.
type Reader struct {
	root    string
	skip    uint64 // bytes still to drop before the first one Read returns
	started bool
	done    bool
	err     error // sticky

	stack []frame // the open directories, innermost last

	// buf[off:] are format bytes (tokens, sizes, padding) not yet read.
	buf []byte
	off int

	// The regular file whose contents are being read.
	file     *os.File
	fileName string
	fileLeft uint64 // contents still to read
	filePad  int    // padding after the contents
}

// Open returns a Reader of the NAR of the tree at path (a symlink at path
// is dumped as a symlink), starting at byte offset of the archive. The
// root is lstat'ed at once: a missing path is an error wrapping
// fs.ErrNotExist. An offset beyond the end gives an empty read.
func Open(path string, offset uint64) (*Reader, error) {
	if _, err := os.Lstat(path); err != nil {
		return nil, fmt.Errorf("dump %s: %w", path, err)
	}
	return &Reader{root: path, skip: offset, buf: make([]byte, 0, 512)}, nil
}

// Read reads the next bytes of the archive; io.EOF after its last byte.
// Once Read has failed it keeps failing.
func (r *Reader) Read(p []byte) (int, error) { return r.read(p, false) }

// read is Read; with toSend, it stops where the contents of a file that
// SendTo sends from the file itself begin.
func (r *Reader) read(p []byte, toSend bool) (int, error) {
	n := 0
	for n < len(p) && r.err == nil {
		if r.off < len(r.buf) {
			c := copy(p[n:], r.buf[r.off:])
			r.off += c
			n += c
			continue
		}
		r.buf, r.off = r.buf[:0], 0
		if toSend && r.sendable() {
			break
		}
		if r.file != nil {
			m, err := r.readFile(p[n:])
			n += m
			if err != nil {
				r.err = err
			}
			continue
		}
		if r.done {
			r.err = io.EOF
			break
		}
		if err := r.step(); err != nil {
			r.err = err
		}
	}
	if n > 0 && r.err == io.EOF {
		return n, nil
	}
	if n > 0 {
		return n, nil // the error, if any, comes with the next call
	}
	return 0, r.err
}

// SendMin is the smallest file whose contents SendTo passes to the writer
// as the open file: below it, copying the bytes through a buffer costs
// less than the system calls of a sendfile.
const SendMin = 64 << 10

// sendSegment is the most SendTo copies from a file in one call to the
// writer, so that before runs at least that often.
const sendSegment = 4 << 20

// SendTo writes the next n bytes of the archive to w, the bytes Read
// would return. The contents of a regular file of SendMin bytes or more
// go with io.CopyN from the open file, in segments, so that a w whose
// ReadFrom takes an *os.File (a TCP connection, net/http's response
// writer) sends them with sendfile and they never enter user space; the
// format bytes and small files go through buf. before, unless nil, runs
// before each write to w (to push a deadline back). It returns the bytes
// written; the archive ending before n bytes is io.ErrUnexpectedEOF.
func (r *Reader) SendTo(w io.Writer, n uint64, buf []byte, before func()) (uint64, error) {
	var sent uint64
	for sent < n {
		if r.err == nil && r.sendable() {
			k := min(r.fileLeft, n-sent, sendSegment)
			if before != nil {
				before()
			}
			m, err := io.CopyN(w, r.file, int64(k))
			sent += uint64(m)
			r.fileLeft -= uint64(m)
			switch {
			case err == io.EOF:
				r.err = fmt.Errorf("dump %s: file shrank while being read (%d bytes short)", r.fileName, r.fileLeft)
				return sent, r.err
			case err != nil:
				// The writer's error (the client went away): the
				// Reader stays where it is.
				return sent, err
			}
			if r.fileLeft == 0 {
				if err := r.endFile(); err != nil {
					r.err = err
					return sent, err
				}
			}
			continue
		}
		m, err := r.read(buf[:min(uint64(len(buf)), n-sent)], true)
		if m > 0 {
			if before != nil {
				before()
			}
			if _, werr := w.Write(buf[:m]); werr != nil {
				return sent, werr
			}
			sent += uint64(m)
		}
		if err == io.EOF {
			return sent, io.ErrUnexpectedEOF
		}
		if err != nil {
			return sent, err
		}
	}
	return sent, nil
}

// sendable reports whether the next bytes are contents of a file that
// SendTo sends from the file.
func (r *Reader) sendable() bool {
	return r.off >= len(r.buf) && r.file != nil && r.fileLeft >= SendMin
}

// Close closes the file being read, if any.
func (r *Reader) Close() error {
	if r.err == nil {
		r.err = errors.New("nardump: read after Close")
	}
	if r.file != nil {
		err := r.file.Close()
		r.file = nil
		return err
	}
	return nil
}

// readFile reads contents of the current file into p, and finishes the
// file's node when they are all read.
func (r *Reader) readFile(p []byte) (int, error) {
	if uint64(len(p)) > r.fileLeft {
		p = p[:r.fileLeft]
	}
	n, err := r.file.Read(p)
	r.fileLeft -= uint64(n)
	if r.fileLeft == 0 {
		return n, r.endFile()
	}
	switch {
	case err == io.EOF || (err == nil && n == 0):
		return n, fmt.Errorf("dump %s: file shrank while being read (%d bytes short)", r.fileName, r.fileLeft)
	case err != nil:
		return n, fmt.Errorf("dump %s: %w", r.fileName, err)
	}
	return n, nil
}

// endFile closes the file whose contents were all read and finishes its
// node.
func (r *Reader) endFile() error {
	err := r.file.Close()
	r.file = nil
	if err != nil {
		return fmt.Errorf("dump %s: %w", r.fileName, err)
	}
	r.put(zeros[:r.filePad])
	r.closeNode()
	return nil
}

// step produces the next format bytes: the archive's start, a directory
// entry, or the end of a directory.
func (r *Reader) step() error {
	if !r.started {
		r.started = true
		r.str(magic)
		return r.node(r.root)
	}
	if len(r.stack) == 0 {
		r.done = true
		return nil
	}
	top := &r.stack[len(r.stack)-1]
	if top.next < len(top.names) {
		name := top.names[top.next]
		top.next++
		r.str("entry")
		r.str("(")
		r.str("name")
		r.str(name)
		r.str("node")
		return r.node(top.dir + "/" + name)
	}
	r.stack = r.stack[:len(r.stack)-1]
	r.closeNode()
	return nil
}

// node starts the node at the file system path p, as Nix does: lstat, so
// symlinks are never followed; only the owner's execute bit counts.
func (r *Reader) node(p string) error {
	fi, err := os.Lstat(p)
	if err != nil {
		return fmt.Errorf("dump: %w", err)
	}
	mode := fi.Mode()
	r.str("(")
	r.str("type")
	switch {
	case mode.IsRegular():
		r.str("regular")
		if mode&0o100 != 0 {
			r.str("executable")
			r.str("")
		}
		r.str("contents")
		size := uint64(fi.Size())
		r.u64(size)
		return r.startFile(p, size)
	case mode&fs.ModeSymlink != 0:
		target, err := os.Readlink(p)
		if err != nil {
			return fmt.Errorf("dump: %w", err)
		}
		r.str("symlink")
		r.str("target")
		r.str(target)
		r.closeNode()
		return nil
	case mode.IsDir():
		r.str("directory")
		d, err := os.Open(p)
		if err != nil {
			return fmt.Errorf("dump: %w", err)
		}
		names, err := d.Readdirnames(-1)
		d.Close()
		if err != nil {
			return fmt.Errorf("dump %s: %w", p, err)
		}
		slices.Sort(names)
		r.stack = append(r.stack, frame{dir: p, names: names})
		return nil
	}
	return fmt.Errorf("dump %s: unsupported file type %v", p, mode.Type())
}

// startFile sets up the contents of the regular file at p, size bytes: not
// opened at all when they end before the offset, else opened and seeked.
func (r *Reader) startFile(p string, size uint64) error {
	if r.skip >= size {
		r.skip -= size
		r.put(zeros[:padLen(size)])
		r.closeNode()
		return nil
	}
	f, err := openFile(p)
	if err != nil {
		return fmt.Errorf("dump: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("dump: %w", err)
	}
	if !fi.Mode().IsRegular() || uint64(fi.Size()) != size {
		f.Close()
		return fmt.Errorf("dump %s: changed while being read", p)
	}
	if r.skip > 0 {
		if _, err := f.Seek(int64(r.skip), io.SeekStart); err != nil {
			f.Close()
			return fmt.Errorf("dump: %w", err)
		}
	}
	r.file, r.fileName = f, p
	r.fileLeft, r.filePad = size-r.skip, padLen(size)
	r.skip = 0
	return nil
}

// closeNode ends a node: its ")" and, below the root, its entry's.
func (r *Reader) closeNode() {
	r.str(")")
	if len(r.stack) > 0 {
		r.str(")")
	}
}

var zeros [8]byte

// openFile opens a regular file's contents (tests count the calls).
var openFile = os.Open

// put appends format bytes, dropping those before the offset.
func (r *Reader) put(b []byte) {
	if r.skip > 0 {
		n := min(uint64(len(b)), r.skip)
		b = b[n:]
		r.skip -= n
	}
	r.buf = append(r.buf, b...)
}

// str writes a string: its length, its bytes, zero padding to 8 bytes.
func (r *Reader) str(s string) {
	r.u64(uint64(len(s)))
	if r.skip == 0 {
		r.buf = append(r.buf, s...)
	} else {
		n := min(uint64(len(s)), r.skip)
		r.skip -= n
		r.buf = append(r.buf, s[n:]...)
	}
	r.put(zeros[:padLen(uint64(len(s)))])
}

func (r *Reader) u64(n uint64) {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], n)
	r.put(b[:])
}

// padLen is the number of zero bytes after n bytes of a string.
func padLen(n uint64) int { return int(-n & 7) }
