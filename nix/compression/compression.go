// Package compression maps the compression names a narinfo uses to
// streaming readers and writers, and detects them from magic bytes.
package compression

import "io"

// Names narinfos use.
const (
	None  = "none"
	XZ    = "xz"
	Zstd  = "zstd"
	Bzip2 = "bzip2"
)

// Supported lists the names NewReader accepts.
var Supported = []string{None, XZ, Zstd, Bzip2}

// Extension returns the file extension Nix uses after ".nar" for a
// compression: "" for none, ".xz", ".zst", ".bz2".
func Extension(name string) (string, error) { panic("unimplemented") }

// FromExtension is the inverse of Extension, for a URL's suffix after ".nar"
// ("", ".xz", ".zst", ".bz2").
func FromExtension(ext string) (string, error) { panic("unimplemented") }

// Detect names the compression of data starting with prefix (at least 6
// bytes for certainty): xz, zstd and bzip2 by their magic numbers, none
// when prefix starts like a NAR. It returns an error otherwise.
func Detect(prefix []byte) (string, error) { panic("unimplemented") }

// NewReader returns a reader decompressing r; Close releases its resources
// (it does not close r).
func NewReader(name string, r io.Reader) (io.ReadCloser, error) { panic("unimplemented") }

// NewWriter returns a writer compressing into w; Close flushes and finishes
// the stream (it does not close w).
func NewWriter(name string, w io.Writer) (io.WriteCloser, error) { panic("unimplemented") }
