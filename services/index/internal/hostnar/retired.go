package hostnar

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
	"sync"

	"github.com/klauspost/compress/zstd"

	"github.com/nixcache/nixcache/nix/compression"
	"github.com/nixcache/nixcache/nix/nardump"
	"github.com/nixcache/nixcache/nix/nixhash"
	"github.com/nixcache/nixcache/nix/storepath"
	"github.com/nixcache/nixcache/services/index/internal/catalog"
	"github.com/nixcache/nixcache/services/index/internal/fault"
	"github.com/nixcache/nixcache/services/index/internal/narstore"
)

// MaxRemakes bounds the retired copies made again at once: a request for
// one costs the compression of its whole NAR (anonymously, for whoever
// kept the old narinfo), so past it the answer is Unavailable (503 with
// Retry-After at the gateway).
const MaxRemakes = 2

// errRemade is why a retired copy cannot be served again: the bytes made
// again are not the ones recorded.
var errRemade = errors.New("the copy made again differs from the one evicted (was -host-nar-level changed?)")

// OpenRetired opens the byte range [offset, offset+length) (length 0: to
// the end) of a retired copy (evicted, its file gone), for a client that
// holds a narinfo naming it: the copy is made again from the store, as
// it streams. zstd at the same level makes the same bytes from the same
// NAR, so it is the file the narinfo names; the bytes are hashed on the
// way and the stream fails before its last byte if they are not (another
// level, another encoder version), so a client never gets a wrong file
// whole. A plain copy (compression none) is the NAR itself, always the
// same bytes. A path that is gone or changed is fault.ErrNotFound.
func (s *Store) OpenRetired(ctx context.Context, hn catalog.HostNar, offset, length uint64) (*narstore.Range, error) {
	nf := hn.File
	total := nf.GetFileSize()
	if offset >= total && !(offset == 0 && total == 0) {
		return nil, fault.OutOfRange("offset %d is at or beyond the end of the %d-byte file", offset, total)
	}
	n := total - offset
	if length > 0 && length < n {
		n = length
	}
	gone := fault.NotFound("NAR file %s is no longer in the cache", nf.GetFileHash())
	info, _, err := s.cat.LocalPathInfo(hn.HashPart)
	if errors.Is(err, fault.ErrNotFound) {
		return nil, gone
	}
	if err != nil {
		return nil, err
	}
	if info.GetNarHash() != nf.GetNarHash() {
		return nil, gone
	}
	want, err := nixhash.ParseAs(nixhash.SHA256, nf.GetFileHash())
	if err != nil {
		return nil, fmt.Errorf("retired copy: %w", err)
	}
	sp, err := storepath.Parse(s.cfg.StoreDir, info.GetStorePath())
	if err != nil {
		return nil, fmt.Errorf("retired copy: %w", err)
	}
	select {
	case s.remaking <- struct{}{}:
	default:
		return nil, fault.Unavailable("%d evicted host NAR copies are being made again already: retry later, or fetch the path's narinfo again (it names the uncompressed NAR now)", cap(s.remaking))
	}
	nr, err := nardump.Open(filepath.Join(s.cfg.StoreDir, sp.Base()), 0)
	if err != nil {
		<-s.remaking
		if errors.Is(err, fs.ErrNotExist) {
			return nil, gone
		}
		return nil, fmt.Errorf("retired copy: %w", err)
	}
	pr, pw := io.Pipe()
	// The slot is given back when the range is closed (the stream ended or
	// its client left): the goroutine stops at its next write then.
	release := sync.OnceFunc(func() { <-s.remaking })
	closer := closerFunc(func() error { release(); return pr.Close() })
	go func() {
		defer nr.Close()
		h := sha256.New()
		count := &counter{}
		dst := io.MultiWriter(pw, h, count)
		var err error
		if nf.GetCompression() == compression.None {
			_, err = io.Copy(dst, narstore.ContextReader(ctx, nr))
		} else {
			err = s.remakeZstd(ctx, dst, nr)
		}
		if err == nil && (count.n != total || !sameDigest(h, want)) {
			err = errRemade
			s.cfg.Log.Warn("retired host NAR copy not served", "hash_part", hn.HashPart, "file_hash", nf.GetFileHash(), "err", err)
		}
		pw.CloseWithError(err) // nil: io.EOF
	}()
	if offset > 0 {
		if _, err := io.CopyN(io.Discard, pr, int64(offset)); err != nil {
			closer.Close()
			return nil, fmt.Errorf("retired copy: skip to offset %d: %w", offset, err)
		}
	}
	return narstore.NewRange(ctx, pr, closer, total, n, nf.GetCompression(), offset+n == total), nil
}

// closerFunc is a func as an io.Closer.
type closerFunc func() error

func (f closerFunc) Close() error { return f() }

// remakeZstd writes the zstd copy of the NAR nr to dst, as the worker
// made it.
func (s *Store) remakeZstd(ctx context.Context, dst io.Writer, nr io.Reader) error {
	enc, err := s.retiredEncoder()
	if err != nil {
		return err
	}
	enc.Reset(dst)
	_, err = io.Copy(enc, narstore.ContextReader(ctx, nr))
	if cerr := enc.Close(); err == nil {
		err = cerr
	}
	enc.Reset(io.Discard) // drop dst
	s.retiredEncoders.Put(enc)
	return err
}

// retiredEncoder returns an encoder of the copies' level from the pool of
// those that made retired copies again (their tables are reused, as the
// worker's are).
func (s *Store) retiredEncoder() (*zstd.Encoder, error) {
	if enc, ok := s.retiredEncoders.Get().(*zstd.Encoder); ok {
		return enc, nil
	}
	return zstd.NewWriter(nil, zstd.WithEncoderLevel(s.level), zstd.WithEncoderConcurrency(1))
}
