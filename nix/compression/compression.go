// Package compression maps the compression names a narinfo uses to
// streaming readers and writers, and detects them from magic bytes.
package compression

import (
	"bufio"
	"bytes"
	"compress/bzip2"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// Names narinfos use.
const (
	None  = "none"
	XZ    = "xz"
	Zstd  = "zstd"
	Bzip2 = "bzip2"
)

// Supported lists the names NewReader accepts.
var Supported = []string{None, XZ, Zstd, Bzip2}

// ErrUnsupported is returned (wrapped) for a compression this package cannot
// read or write.
var ErrUnsupported = errors.New("unsupported compression")

// Magic numbers.
var (
	xzMagic    = []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}
	zstdMagic  = []byte{0x28, 0xb5, 0x2f, 0xfd}
	bzip2Magic = []byte("BZh")
	// narMagic is how every NAR starts: the length 13 as a little-endian
	// uint64, then "nix-archive-1".
	narMagic = append(binary.LittleEndian.AppendUint64(nil, 13), "nix-archive-1"...)
)

// zstdMaxWindow bounds the memory a zstd stream may ask for: 128 MiB is the
// window of zstd's strongest standard level (--ultra -22); Nix does not use
// long-distance mode.
const zstdMaxWindow = 128 << 20

// Extension returns the file extension Nix uses after ".nar" for a
// compression: "" for none, ".xz", ".zst", ".bz2".
func Extension(name string) (string, error) {
	switch name {
	case None:
		return "", nil
	case XZ:
		return ".xz", nil
	case Zstd:
		return ".zst", nil
	case Bzip2:
		return ".bz2", nil
	}
	return "", fmt.Errorf("compression %q: %w", name, ErrUnsupported)
}

// FromExtension is the inverse of Extension, for a URL's suffix after ".nar"
// ("", ".xz", ".zst", ".bz2").
func FromExtension(ext string) (string, error) {
	switch ext {
	case "":
		return None, nil
	case ".xz":
		return XZ, nil
	case ".zst":
		return Zstd, nil
	case ".bz2":
		return Bzip2, nil
	}
	return "", fmt.Errorf("compression extension %q: %w", ext, ErrUnsupported)
}

// Detect names the compression of data starting with prefix (at least 6
// bytes for certainty): xz, zstd and bzip2 by their magic numbers, none
// when prefix starts like a NAR. It returns an error otherwise.
func Detect(prefix []byte) (string, error) {
	switch {
	case bytes.HasPrefix(prefix, xzMagic):
		return XZ, nil
	case bytes.HasPrefix(prefix, zstdMagic):
		return Zstd, nil
	case len(prefix) >= 4 && bytes.HasPrefix(prefix, bzip2Magic) && prefix[3] >= '1' && prefix[3] <= '9':
		return Bzip2, nil
	case len(prefix) > 0 && bytes.HasPrefix(narMagic, prefix[:min(len(prefix), len(narMagic))]):
		return None, nil
	}
	n := min(len(prefix), 8)
	return "", fmt.Errorf("detect compression: unknown magic % x", prefix[:n])
}

// NewReader returns a reader decompressing r; Close releases its resources
// (it does not close r).
func NewReader(name string, r io.Reader) (io.ReadCloser, error) {
	switch name {
	case None:
		return io.NopCloser(r), nil
	case XZ:
		return io.NopCloser(&xzReader{src: r}), nil
	case Zstd:
		zr, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(zstdMaxWindow))
		if err != nil {
			return nil, fmt.Errorf("zstd: %w", err)
		}
		return zstdReader{zr}, nil
	case Bzip2:
		return io.NopCloser(errorPrefix{"bzip2", bzip2.NewReader(r)}), nil
	}
	return nil, fmt.Errorf("decompress %q: %w", name, ErrUnsupported)
}

// NewWriter returns a writer compressing into w; Close flushes and finishes
// the stream (it does not close w).
func NewWriter(name string, w io.Writer) (io.WriteCloser, error) {
	switch name {
	case None:
		return nopWriteCloser{w}, nil
	case XZ:
		xw, err := xz.NewWriter(w)
		if err != nil {
			return nil, fmt.Errorf("xz: %w", err)
		}
		return xw, nil
	case Zstd:
		zw, err := zstd.NewWriter(w, zstd.WithEncoderConcurrency(1))
		if err != nil {
			return nil, fmt.Errorf("zstd: %w", err)
		}
		return zw, nil
	case Bzip2:
		return nil, fmt.Errorf("compress bzip2: %w: the Go standard library only decodes bzip2", ErrUnsupported)
	}
	return nil, fmt.Errorf("compress %q: %w", name, ErrUnsupported)
}

// xzReader starts the xz decoder on the first Read: xz.NewReader reads the
// stream header at once, and NewReader does no I/O.
type xzReader struct {
	src io.Reader
	r   *xz.Reader
	err error
}

func (x *xzReader) Read(p []byte) (int, error) {
	if x.r == nil && x.err == nil {
		// Buffered, so that the decoder does not issue tiny reads.
		x.r, x.err = xz.NewReader(bufio.NewReaderSize(x.src, 64<<10))
		if x.err != nil {
			x.err = fmt.Errorf("xz: %w", x.err)
		}
	}
	if x.err != nil {
		return 0, x.err
	}
	n, err := x.r.Read(p)
	if err != nil && err != io.EOF {
		err = fmt.Errorf("xz: %w", err)
	}
	return n, err
}

// zstdReader adapts a *zstd.Decoder, whose Close returns nothing.
type zstdReader struct{ d *zstd.Decoder }

func (z zstdReader) Read(p []byte) (int, error) {
	n, err := z.d.Read(p)
	if err != nil && err != io.EOF {
		err = fmt.Errorf("zstd: %w", err)
	}
	return n, err
}

func (z zstdReader) Close() error {
	z.d.Close()
	return nil
}

// errorPrefix names the format in the errors of a decompressor.
type errorPrefix struct {
	name string
	r    io.Reader
}

func (e errorPrefix) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && err != io.EOF {
		err = fmt.Errorf("%s: %w", e.name, err)
	}
	return n, err
}

type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }
