package nar

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

// writeBufSize is the Writer's buffer for the small strings of the format;
// large contents writes go past it.
const writeBufSize = 64 << 10

// Writer writes a NAR stream from headers in archive order.
type Writer struct {
	w       *bufio.Writer
	err     error // sticky error
	started bool
	closed  bool
	dirs    []dirFrame // the open directories, innermost last
	// The current regular file: contents still to come, and its padding.
	inFile bool
	left   uint64
	pad    int
	// rootClosed is set once the root node is complete: nothing may follow.
	rootClosed bool
	scratch    [8]byte
}

// NewWriter returns a Writer writing to w.
func NewWriter(w io.Writer) *Writer {
	return &Writer{w: bufio.NewWriterSize(w, writeBufSize)}
}

// WriteHeader starts the node h; for regular files exactly h.Size bytes of
// contents must follow through Write.
func (w *Writer) WriteHeader(h *Header) error {
	if w.err != nil {
		return w.err
	}
	if err := w.writeHeader(h); err != nil {
		w.err = err
		return err
	}
	return nil
}

func (w *Writer) writeHeader(h *Header) error {
	if w.closed {
		return errors.New("nar: WriteHeader after Close")
	}
	if err := w.endFile(); err != nil {
		return err
	}
	if err := checkHeader(h); err != nil {
		return err
	}
	if !w.started {
		if h.Path != "/" {
			return fmt.Errorf("nar: first header has path %q, want the root \"/\"", h.Path)
		}
		w.started = true
		w.str(magic)
		return w.node(h)
	}
	if w.rootClosed {
		return fmt.Errorf("nar: header %q after the root node is complete", h.Path)
	}
	if h.Path == "/" || !strings.HasPrefix(h.Path, "/") || strings.HasSuffix(h.Path, "/") {
		return fmt.Errorf("nar: header path %q is not a path below the root", h.Path)
	}
	i := strings.LastIndexByte(h.Path, '/')
	parent, name := h.Path[:i], h.Path[i+1:]
	if parent == "" {
		parent = "/"
	}
	if childPath(parent, name) != h.Path || strings.Contains(h.Path, "//") {
		return fmt.Errorf("nar: header path %q is not clean", h.Path)
	}
	if err := checkName(name); err != nil {
		return fmt.Errorf("nar: header path %q: %w", h.Path, err)
	}
	// Close the directories that h is not in.
	for len(w.dirs) > 0 && w.dirs[len(w.dirs)-1].path != parent {
		w.closeDir()
	}
	if len(w.dirs) == 0 {
		w.rootClosed = true
		return fmt.Errorf("nar: header %q: its directory %q is not open (headers out of order?)", h.Path, parent)
	}
	dir := &w.dirs[len(w.dirs)-1]
	if dir.prev != "" && name <= dir.prev {
		return fmt.Errorf("nar: header %q: entry %q does not sort after %q", h.Path, name, dir.prev)
	}
	dir.prev = name
	w.str(tokEntry)
	w.str(tokOpen)
	w.str(tokName)
	w.str(name)
	w.str(tokNode)
	return w.node(h)
}

// checkHeader validates a header on its own.
func checkHeader(h *Header) error {
	if len(h.Path) > maxPathLen {
		return fmt.Errorf("nar: header path of %d bytes, longer than %d", len(h.Path), maxPathLen)
	}
	switch h.Type {
	case TypeRegular:
		if h.LinkTarget != "" {
			return fmt.Errorf("nar: header %q: regular file with a link target", h.Path)
		}
	case TypeDirectory:
		if h.Executable || h.Size != 0 || h.LinkTarget != "" {
			return fmt.Errorf("nar: header %q: directory with executable, size or link target set", h.Path)
		}
	case TypeSymlink:
		if h.Executable || h.Size != 0 {
			return fmt.Errorf("nar: header %q: symlink with executable or size set", h.Path)
		}
		if err := checkTarget(h.LinkTarget); err != nil {
			return fmt.Errorf("nar: header %q: %w", h.Path, err)
		}
	default:
		return fmt.Errorf("nar: header %q: unknown type %v", h.Path, h.Type)
	}
	return nil
}

// node writes the start of a node: up to the contents of a regular file,
// the whole of a symlink, the opening of a directory.
func (w *Writer) node(h *Header) error {
	w.str(tokOpen)
	w.str(tokType)
	switch h.Type {
	case TypeRegular:
		w.str(tokRegular)
		if h.Executable {
			w.str(tokExec)
			w.str("")
		}
		w.str(tokContents)
		w.uint64(h.Size)
		w.inFile, w.left, w.pad = true, h.Size, padLen(h.Size)
	case TypeSymlink:
		w.str(tokSymlink)
		w.str(tokTarget)
		w.str(h.LinkTarget)
		w.endNode()
	case TypeDirectory:
		w.str(tokDirectory)
		w.dirs = append(w.dirs, dirFrame{path: h.Path})
	}
	return w.flushErr()
}

// endNode writes the ")" of a node, and that of its entry unless it is the
// root.
func (w *Writer) endNode() {
	w.str(tokClose)
	if len(w.dirs) > 0 {
		w.str(tokClose)
	} else {
		w.rootClosed = true
	}
}

// closeDir ends the innermost open directory.
func (w *Writer) closeDir() {
	w.dirs = w.dirs[:len(w.dirs)-1]
	w.endNode()
}

// endFile finishes the current regular file, which must be complete.
func (w *Writer) endFile() error {
	if !w.inFile {
		return nil
	}
	if w.left != 0 {
		return fmt.Errorf("nar: file ended %d bytes short of its size", w.left)
	}
	w.inFile = false
	var zero [8]byte
	w.w.Write(zero[:w.pad])
	w.endNode()
	return w.flushErr()
}

// Write writes contents of the current regular file.
func (w *Writer) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	if !w.inFile {
		w.err = errors.New("nar: Write outside a regular file")
		return 0, w.err
	}
	if uint64(len(p)) > w.left {
		w.err = fmt.Errorf("nar: Write of %d bytes, more than the %d left of the file's size", len(p), w.left)
		return 0, w.err
	}
	n, err := w.w.Write(p)
	w.left -= uint64(n)
	if err != nil {
		w.err = fmt.Errorf("nar: %w", err)
		return n, w.err
	}
	return n, nil
}

// ReadFrom copies a file's contents from r (it lets io.Copy skip a buffer).
func (w *Writer) ReadFrom(r io.Reader) (int64, error) {
	if w.err != nil {
		return 0, w.err
	}
	if !w.inFile {
		w.err = errors.New("nar: Write outside a regular file")
		return 0, w.err
	}
	// Read one byte more than is left, to notice a reader that has more.
	n, err := w.w.ReadFrom(io.LimitReader(r, int64(w.left)+1))
	if uint64(n) > w.left {
		w.err = fmt.Errorf("nar: contents longer than the %d bytes left of the file's size", w.left)
		return n, w.err
	}
	w.left -= uint64(n)
	if err != nil {
		w.err = fmt.Errorf("nar: %w", err)
	}
	return n, w.err
}

// Close finishes the archive (closing open directories); it does not close
// the underlying writer.
func (w *Writer) Close() error {
	if w.closed {
		return w.err
	}
	if w.err != nil {
		w.closed = true
		return w.err
	}
	w.closed = true
	if !w.started {
		w.err = errors.New("nar: Close of an empty archive (no root header)")
		return w.err
	}
	if err := w.endFile(); err != nil {
		w.err = err
		return err
	}
	for len(w.dirs) > 0 {
		w.closeDir()
	}
	if err := w.w.Flush(); err != nil {
		w.err = fmt.Errorf("nar: %w", err)
	}
	return w.err
}

// str writes a string with its length and padding. Errors of the
// underlying writer stick in the bufio.Writer; flushErr reports them.
func (w *Writer) str(s string) {
	w.uint64(uint64(len(s)))
	w.w.WriteString(s)
	if p := padLen(uint64(len(s))); p > 0 {
		var zero [8]byte
		w.w.Write(zero[:p])
	}
}

// uint64 writes a little-endian 64-bit number.
func (w *Writer) uint64(n uint64) {
	binary.LittleEndian.PutUint64(w.scratch[:], n)
	w.w.Write(w.scratch[:])
}

// flushErr reports an error the bufio.Writer has met.
func (w *Writer) flushErr() error {
	if _, err := w.w.Write(nil); err != nil {
		return fmt.Errorf("nar: %w", err)
	}
	return nil
}
