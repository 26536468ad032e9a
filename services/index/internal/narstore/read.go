package narstore

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/nixcache/nixcache/nix/compression"
	"github.com/nixcache/nixcache/nix/nixhash"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/fault"
)

// Range is an open byte range of a stored file, or of the NAR it holds.
// Read returns exactly Length bytes then io.EOF; a shorter underlying
// stream (a damaged file) is io.ErrUnexpectedEOF.
type Range struct {
	// Total is the size of the whole representation (file or NAR).
	Total uint64
	// Compression of the bytes Read returns: the file's, or "none".
	Compression string
	// Length is the number of bytes Read returns.
	Length uint64

	ctx     context.Context
	r       io.Reader
	left    uint64
	closers []io.Closer
	// exact: r must end where the range does (see NewRange).
	exact bool
}

// NewRange returns a Range of the first length bytes of r, which holds a
// representation of total bytes in compression starting at the range's
// offset; closing the Range closes c. With exact, the range ends where the
// representation does and r must end there too: more bytes are an error.
// Reads fail once ctx is done.
func NewRange(ctx context.Context, r io.Reader, c io.Closer, total, length uint64, compression string, exact bool) *Range {
	return &Range{ctx: ctx, r: r, closers: []io.Closer{c}, Total: total, Length: length, left: length,
		Compression: compression, exact: exact}
}

// Open opens the byte range [offset, offset+length) of the file nf
// describes (length 0: to the end), as stored or, with decompress, as the
// uncompressed NAR it holds. An offset at or beyond the end is an error of
// class fault.ErrOutOfRange, except offset 0 of an empty representation.
// Reads fail once ctx is done. The caller closes the Range.
func (s *Store) Open(ctx context.Context, nf *indexv1.NarFile, decompress bool, offset, length uint64) (*Range, error) {
	h, err := nixhash.ParseAs(nixhash.SHA256, nf.GetFileHash())
	if err != nil {
		return nil, fmt.Errorf("open NAR file: %w", err)
	}
	rg := &Range{ctx: ctx, Total: nf.GetFileSize(), Compression: nf.GetCompression()}
	plain := !decompress || nf.GetCompression() == compression.None
	if decompress {
		rg.Total = nf.GetNarSize()
		rg.Compression = compression.None
	}
	if offset >= rg.Total && !(offset == 0 && rg.Total == 0) {
		return nil, fault.OutOfRange("offset %d is at or beyond the end of the %d-byte NAR", offset, rg.Total)
	}
	rg.Length = rg.Total - offset
	if length > 0 && length < rg.Length {
		rg.Length = length
	}
	rg.left = rg.Length

	k, err := key(h.NixBase32(), nf.GetCompression())
	if err != nil {
		return nil, err
	}
	readFrom, readLen := int64(0), int64(0)
	if plain {
		readFrom, readLen = int64(offset), int64(rg.Length)
	}
	f, err := s.files.Open(ctx, k, readFrom, readLen)
	if isMissing(err) {
		return nil, s.errMissing(nf, err)
	}
	if err != nil {
		return nil, fmt.Errorf("open NAR file %s in %s: %w", nf.GetFileHash(), s.files, err)
	}
	rg.closers = append(rg.closers, f)
	if plain {
		rg.r = f
		return rg, nil
	}
	dec, err := compression.NewReader(nf.GetCompression(), bufio.NewReaderSize(f, readSize))
	if err != nil {
		rg.Close()
		return nil, fmt.Errorf("decompress NAR file %s: %w", nf.GetFileHash(), err)
	}
	rg.closers = append(rg.closers, dec)
	rg.r = dec
	if offset > 0 {
		// A compressed stream has no index: decompress up to the offset.
		skipped, err := io.CopyN(io.Discard, ctxReader{ctx, dec}, int64(offset))
		if err != nil {
			rg.Close()
			return nil, fmt.Errorf("decompress NAR file %s: skip to offset %d (at %d): %w", nf.GetFileHash(), offset, skipped, err)
		}
	}
	return rg, nil
}

// Read reads from the range.
func (r *Range) Read(p []byte) (int, error) {
	if r.left == 0 {
		return 0, io.EOF
	}
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	if uint64(len(p)) > r.left {
		p = p[:r.left]
	}
	n, err := r.r.Read(p)
	r.left -= uint64(n)
	if err == io.EOF {
		if r.left > 0 {
			return n, fmt.Errorf("NAR ends %d bytes early: %w", r.left, io.ErrUnexpectedEOF)
		}
		err = nil
	}
	if err == nil && r.left == 0 && r.exact {
		var one [1]byte
		m, perr := io.ReadFull(r.r, one[:])
		switch {
		case m > 0:
			err = errors.New("NAR is longer than its registered size")
		case perr != io.EOF:
			err = perr
		}
	}
	return n, err
}

// Close releases the file and decompressor.
func (r *Range) Close() error {
	var errs []error
	for i := len(r.closers) - 1; i >= 0; i-- {
		errs = append(errs, r.closers[i].Close())
	}
	r.closers = nil
	return errors.Join(errs...)
}

// ContextReader returns r failing its reads once ctx is done (package
// hostnar streams copies through it too).
func ContextReader(ctx context.Context, r io.Reader) io.Reader { return ctxReader{ctx, r} }

// ctxReader fails reads once ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
