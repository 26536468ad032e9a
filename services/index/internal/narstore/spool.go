package narstore

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/nixcache/nixcache/nix/nixhash"
	"github.com/nixcache/nixcache/platform/diskio"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/fault"
)

// A spooled upload is the other way in, for a co-located gateway: instead
// of streaming the NAR file to the index, the gateway writes it into a
// file the index made and handed it (SpoolFile; the descriptor crosses a
// Unix socket, package spool), closes it, and asks the index to take it
// (IngestSpooled). The bytes then cross no socket between the two, and
// the index reads them from the page cache to verify them, once.
//
// The file is the index's own (mode 0600, in its tmp/), and
// IngestSpooled takes a read lease on it first (fcntl F_SETLEASE), which
// the kernel grants only when no descriptor open for writing remains
// anywhere, the gateway's included; a later open for writing would break
// the lease, which is checked again once the file is verified. That
// catches a gateway that did not close its descriptor, not a hostile one:
// a process that held the descriptor can keep a handle no lease sees
// (O_PATH) and reopen the file, as the index's user, after it is stored.
// So the spool is offered only to a gateway that runs as the index's user
// with write access to its files anyway (docs/configure.md).

// SpoolFile makes an empty upload file in tmp/ and returns it twice: open
// for writing, to hand to the uploader and then close, and open for
// reading, for IngestSpooled. The caller removes it (Discard) unless
// IngestSpooled took it.
func (s *Store) SpoolFile() (w, r *os.File, err error) {
	w, err = os.CreateTemp(s.tmpDir, "spool-*")
	if err != nil {
		return nil, nil, fmt.Errorf("create spool file: %w", err)
	}
	r, err = os.Open(w.Name())
	if err != nil {
		w.Close()
		os.Remove(w.Name())
		return nil, nil, fmt.Errorf("open spool file: %w", err)
	}
	return w, r, nil
}

// Discard closes and removes a spool file that was not ingested.
func Discard(r *os.File) {
	r.Close()
	os.Remove(r.Name())
}

// SpoolSupported tells whether the store's tmp/ directory grants the read
// leases IngestSpooled relies on (some file systems do not, and
// fs.leases-enable may be off); without them the index offers no spool.
func (s *Store) SpoolSupported() error {
	w, r, err := s.SpoolFile()
	if err != nil {
		return err
	}
	w.Close()
	defer Discard(r)
	if err := takeReadLease(r); err != nil {
		return fmt.Errorf("read lease on %s: %w", s.tmpDir, err)
	}
	return releaseLease(r)
}

// IngestSpooled verifies the spool file r (from SpoolFile), which the
// uploader has written and closed, and stores it, as Ingest does for a
// stream: the same checks, the same errors, and nothing left behind when
// it fails. It owns r whatever happens.
func (s *Store) IngestSpooled(ctx context.Context, r *os.File, want Expect) (*indexv1.NarFile, error) {
	committed := false
	defer func() {
		if !committed {
			Discard(r)
		}
	}()
	if err := want.check(); err != nil {
		return nil, err
	}
	if err := takeReadLease(r); err != nil {
		if errors.Is(err, errOpenForWriting) {
			return nil, fault.Invalid("the spooled upload is still open for writing: close it before PutNar")
		}
		return nil, fmt.Errorf("spooled upload: %w", err)
	}
	st, err := r.Stat()
	if err != nil {
		return nil, fmt.Errorf("spooled upload: %w", err)
	}
	size := uint64(st.Size())
	switch {
	case size == 0:
		return nil, fault.Invalid("empty upload: the NAR file has no bytes")
	case size > s.maxSize:
		return nil, fault.Invalid("the NAR file exceeds the limit of %d bytes", s.maxSize)
	}
	// The disk writes what the gateway left unwritten (it starts the
	// writeback as it writes) while the file is verified; the fsync
	// before the commit then finds little left to do.
	diskio.StartWriteback(r, 0, size)

	prefix := make([]byte, detectLen)
	n, err := r.ReadAt(prefix, 0)
	if err != nil && err != io.EOF {
		return nil, fmt.Errorf("read spooled upload: %w", err)
	}
	comp, err := want.detect(prefix[:n])
	if err != nil {
		return nil, err
	}
	// One pass over the file, in this goroutine: the file hash as it is
	// read, the NAR hash (unless uncompressed) and the parse after the
	// decompression.
	fileHash := sha256.New()
	src := io.TeeReader(io.NewSectionReader(r, 0, st.Size()), fileHash)
	res := s.verify(ctx, comp, src)
	if res.err != nil {
		return nil, res.err
	}
	nf, err := want.result(nixhash.FromHasher(nixhash.SHA256, fileHash), size, comp, res)
	if err != nil {
		return nil, err
	}
	if err := checkReadLease(r); err != nil {
		return nil, fault.Invalid("the spooled upload was opened for writing while it was verified: refused")
	}
	// The lease goes with r, which the commit closes.
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("spooled upload: %w", err)
	}
	committed = true
	if err := s.commit(ctx, r, nf); err != nil {
		return nil, err
	}
	return nf, nil
}
