// Package nar reads and writes Nix ARchives (NAR) as streams, and dumps a
// directory tree into one, byte for byte as nix-store --dump does.
package nar

import "io"

// NodeType is the type of a NAR node.
type NodeType uint8

const (
	TypeRegular NodeType = iota + 1
	TypeDirectory
	TypeSymlink
)

// Header describes one node of a NAR, in the order the archive holds them.
type Header struct {
	// Path of the node inside the archive: "/" for the root, then
	// "/dir/file" (slash-separated, no trailing slash).
	Path       string
	Type       NodeType
	Executable bool   // regular files only
	Size       uint64 // regular files only: contents length
	LinkTarget string // symlinks only
}

// Reader reads a NAR stream and validates it as it goes: the magic, token
// structure, padding (zero bytes), entry names (not empty, ".", "..", no '/'
// or NUL), entries strictly sorted and unique, string lengths bounded.
type Reader struct{}

// NewReader returns a Reader reading from r.
func NewReader(r io.Reader) *Reader { panic("unimplemented") }

// Next advances to the next node and returns its header; io.EOF after the
// whole archive was read and found well-formed (trailing bytes after the
// root node are an error). The contents of a regular file are read with
// Read before the next call to Next (unread contents are skipped).
func (r *Reader) Next() (*Header, error) { panic("unimplemented") }

// Read reads the current regular file's contents.
func (r *Reader) Read(p []byte) (int, error) { panic("unimplemented") }

// Validate reads a whole NAR from r and reports its size in bytes and the
// first structural error.
func Validate(r io.Reader) (uint64, error) { panic("unimplemented") }

// Writer writes a NAR stream from headers in archive order.
type Writer struct{}

// NewWriter returns a Writer writing to w.
func NewWriter(w io.Writer) *Writer { panic("unimplemented") }

// WriteHeader starts the node h; for regular files exactly h.Size bytes of
// contents must follow through Write.
func (w *Writer) WriteHeader(h *Header) error { panic("unimplemented") }

// Write writes contents of the current regular file.
func (w *Writer) Write(p []byte) (int, error) { panic("unimplemented") }

// Close finishes the archive (closing open directories); it does not close
// the underlying writer.
func (w *Writer) Close() error { panic("unimplemented") }

// DumpPath writes the NAR of the file system tree at path to w, as
// nix-store --dump does: streamed, file contents never held whole in memory.
func DumpPath(w io.Writer, path string) error { panic("unimplemented") }
