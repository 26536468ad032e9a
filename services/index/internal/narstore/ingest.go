package narstore

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"

	"github.com/nixcache/nixcache/nix/compression"
	"github.com/nixcache/nixcache/nix/nar"
	"github.com/nixcache/nixcache/nix/nixhash"
	"github.com/nixcache/nixcache/platform/diskio"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/fault"
)

// detectLen is how many leading bytes compression.Detect needs.
const detectLen = 6

// readSize is the size of the buffer uploads are read with.
const readSize = 256 << 10

// Expect is what the uploader claims about a file; zero fields claim nothing.
type Expect struct {
	FileHash    nixhash.Hash // SHA-256 of the file as uploaded
	Compression string       // a compression name
}

// Ingest reads one NAR file from r and stores it. While the bytes stream
// in it writes them to a temporary file, hashes and counts them, detects
// their compression, and decompresses them into a NAR parser that
// validates the archive and hashes it; nothing is ever held whole in
// memory. Only a file that passed every check is moved into place; when an
// identical file is already there, it is replaced (it may have rotted).
//
// The errors that blame the upload are of class fault.ErrInvalid; an error
// reading r (the uploader went away) is returned wrapped as is. A failed
// or cancelled upload leaves nothing behind.
func (s *Store) Ingest(ctx context.Context, r io.Reader, want Expect) (*indexv1.NarFile, error) {
	if err := want.check(); err != nil {
		return nil, err
	}

	tmp, err := os.CreateTemp(s.tmpDir, "upload-*")
	if err != nil {
		return nil, fmt.Errorf("create upload file: %w", err)
	}
	committed := false
	defer func() {
		if !committed {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()

	// Compression is known from the first bytes.
	prefix := make([]byte, detectLen)
	n, err := io.ReadFull(r, prefix)
	switch {
	case err == io.EOF:
		return nil, fault.Invalid("empty upload: the NAR file has no bytes")
	case err != nil && err != io.ErrUnexpectedEOF:
		return nil, fmt.Errorf("receive NAR file: %w", err)
	}
	prefix = prefix[:n]
	comp, err := want.detect(prefix)
	if err != nil {
		return nil, err
	}

	// The verifier reads the upload from a pipe as it is written.
	pr, pw := io.Pipe()
	verified := make(chan verifyResult, 1)
	// The verifier watches ctx: a client that leaves stops the
	// decompression within one read, even of a bomb that inflates without
	// reading more of the upload.
	go func() {
		res := s.verify(ctx, comp, pr)
		pr.CloseWithError(res.err)
		verified <- res
	}()

	u := upload{file: tmp, hash: sha256.New(), pipe: pw, max: s.maxSize}
	err = u.copy(r, prefix)
	if err != nil {
		pw.CloseWithError(err)
		res := <-verified
		if errors.Is(err, errVerifierDone) && res.err != nil {
			return nil, res.err
		}
		return nil, err
	}
	pw.Close()
	res := <-verified
	if res.err != nil {
		return nil, res.err
	}

	nf, err := want.result(nixhash.FromHasher(nixhash.SHA256, u.hash), u.size, comp, res)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("receive NAR file: %w", err)
	}
	// The backend owns the file from here on, whatever happens.
	committed = true
	if err := s.commit(ctx, tmp, nf); err != nil {
		return nil, err
	}
	return nf, nil
}

// check refuses claims that cannot be checked.
func (want Expect) check() error {
	if want.Compression != "" {
		if _, err := compression.Extension(want.Compression); err != nil {
			return fault.Invalid("expected compression %q is not one of %v", want.Compression, compression.Supported)
		}
	}
	if !want.FileHash.IsZero() && want.FileHash.Algo != nixhash.SHA256 {
		return fault.Invalid("expected file hash %s is not a sha256 hash", want.FileHash)
	}
	return nil
}

// detect is the compression of a file that starts with prefix (at least
// detectLen bytes unless the file is shorter), which must be the claimed
// one, if any.
func (want Expect) detect(prefix []byte) (string, error) {
	comp, err := compression.Detect(prefix)
	if err != nil {
		return "", fault.Invalid("not a NAR file, nor an xz, zstd or bzip2 compressed one: %v", err)
	}
	if want.Compression != "" && want.Compression != comp {
		return "", fault.Invalid("compression mismatch: the URL names %s but the uploaded file is %s", want.Compression, comp)
	}
	return comp, nil
}

// result is the description of a verified file of size bytes that
// hashes to fileHash, once it matches the claimed hash, if any.
func (want Expect) result(fileHash nixhash.Hash, size uint64, comp string, res verifyResult) (*indexv1.NarFile, error) {
	if comp == compression.None {
		res.narHash = fileHash
	}
	if !want.FileHash.IsZero() && !want.FileHash.Equal(fileHash) {
		return nil, fault.Invalid("file hash mismatch: the URL names %s but the uploaded file hashes to %s", want.FileHash, fileHash)
	}
	return &indexv1.NarFile{
		FileHash:    fileHash.String(),
		FileSize:    size,
		Compression: comp,
		NarHash:     res.narHash.String(),
		NarSize:     res.narSize,
	}, nil
}

// errVerifierDone says the verifier stopped reading before the upload ended:
// its own result explains why.
var errVerifierDone = errors.New("NAR verification ended early")

// upload copies the uploaded bytes to the temporary file, the file hash
// and the verifier's pipe, counting them.
type upload struct {
	file *os.File
	hash hash.Hash
	pipe *io.PipeWriter
	max  uint64
	size uint64
	// written is where the last writeback started (diskio.StartWriteback).
	written uint64
}

func (u *upload) copy(r io.Reader, prefix []byte) error {
	if err := u.write(prefix); err != nil {
		return err
	}
	if wt, ok := r.(io.WriterTo); ok {
		// The upload's own chunks go to the file, the hash and the
		// verifier as they are: no copy into a buffer of ours first.
		w := &uploadWriter{u: u}
		_, err := wt.WriteTo(w)
		switch {
		case w.err != nil:
			return w.err
		case err != nil:
			return fmt.Errorf("receive NAR file: %w", err)
		}
		return nil
	}
	buf := make([]byte, readSize)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if werr := u.write(buf[:n]); werr != nil {
				return werr
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("receive NAR file: %w", err)
		}
	}
}

// uploadWriter is upload.write as an io.Writer that keeps its error.
type uploadWriter struct {
	u   *upload
	err error
}

func (w *uploadWriter) Write(p []byte) (int, error) {
	if w.err = w.u.write(p); w.err != nil {
		return 0, w.err
	}
	return len(p), nil
}

func (u *upload) write(p []byte) error {
	u.size += uint64(len(p))
	if u.size > u.max {
		return fault.Invalid("the NAR file exceeds the limit of %d bytes", u.max)
	}
	if _, err := u.file.Write(p); err != nil {
		return fmt.Errorf("write upload file: %w", err)
	}
	if u.size-u.written >= diskio.WritebackSize {
		diskio.StartWriteback(u.file, u.written, u.size-u.written)
		u.written = u.size
	}
	u.hash.Write(p)
	if _, err := u.pipe.Write(p); err != nil {
		return errVerifierDone
	}
	return nil
}

type verifyResult struct {
	narHash nixhash.Hash // zero for an uncompressed file: it is the file hash
	narSize uint64
	err     error
}

// verify decompresses src and validates it as a NAR, hashing it unless it
// is uncompressed (then the NAR hash is the file hash). It reads src to
// its end unless it fails; it stops when ctx ends, and when the
// decompression costs more than the store's Limits allow.
func (s *Store) verify(ctx context.Context, comp string, src io.Reader) (res verifyResult) {
	in := &countingReader{r: src}
	dec, err := compression.NewReader(comp, in)
	if err != nil {
		return verifyResult{err: fault.Invalid("decompress %s: %v", comp, err)}
	}
	defer dec.Close()
	lim := &limitedReader{r: dec, left: s.maxSize, ctx: ctx}
	if comp != compression.None {
		lim.in, lim.ratio, lim.floor = in, s.limits.MaxRatio, s.limits.RatioFloor
	}
	var narReader io.Reader = lim
	var h hash.Hash
	if comp != compression.None {
		h = sha256.New()
		narReader = io.TeeReader(lim, h)
	}
	size, err := nar.Validate(narReader)
	if err == nil {
		// The parser rejects bytes after the archive; make sure the
		// decompressor has none left either, nor the upload.
		var n int64
		n, err = io.Copy(io.Discard, lim)
		if err == nil && n > 0 {
			err = fault.Invalid("invalid NAR: %d bytes of trailing data after the archive", n)
		}
	}
	if err == nil {
		var n int64
		n, err = io.Copy(io.Discard, src)
		if err == nil && n > 0 {
			err = fault.Invalid("invalid %s file: %d bytes of trailing data after the compressed stream", comp, n)
		}
	}
	switch {
	case err == nil:
	case errors.Is(err, fault.ErrInvalid):
		return verifyResult{err: err}
	case lim.ctxErr != nil:
		return verifyResult{err: fmt.Errorf("verify NAR: %w", lim.ctxErr)}
	case lim.bomb:
		return verifyResult{err: fault.Invalid("the %s file decompresses to more than %d times its size (%d bytes from %d): refused as a decompression bomb (-max-decompression-ratio)",
			comp, lim.ratio, lim.read, in.n)}
	case lim.exceeded:
		return verifyResult{err: fault.Invalid("the decompressed NAR exceeds the limit of %d bytes", s.maxSize)}
	case lim.err != nil && comp != compression.None:
		return verifyResult{err: fault.Invalid("decompress %s: %v", comp, lim.err)}
	case lim.err != nil:
		// An uncompressed stream's only read error is the upload's own.
		return verifyResult{err: lim.err}
	default:
		return verifyResult{err: fault.Invalid("invalid NAR: %v", err)}
	}
	res = verifyResult{narSize: size}
	if h != nil {
		res.narHash = nixhash.FromHasher(nixhash.SHA256, h)
	}
	if lim.read != size {
		return verifyResult{err: fmt.Errorf("verify NAR: parser counted %d bytes, %d were read", size, lim.read)}
	}
	return res
}

// limitedReader reads at most left bytes of r, failing beyond, and
// remembers the error r returned, if any. It fails too once ctx has ended,
// and, when in is set, once more than floor bytes were read and more than
// ratio times what in has read.
type limitedReader struct {
	r        io.Reader
	left     uint64
	read     uint64
	exceeded bool
	err      error // r's error other than io.EOF

	ctx    context.Context
	ctxErr error

	in    *countingReader // the compressed input; nil: no ratio bound
	ratio uint64          // 0: no ratio bound
	floor uint64
	bomb  bool
}

var (
	errTooLarge = errors.New("size limit exceeded")
	errBomb     = errors.New("decompression ratio exceeded")
)

func (l *limitedReader) Read(p []byte) (int, error) {
	if err := l.ctx.Err(); err != nil {
		l.ctxErr = err
		return 0, err
	}
	if l.in != nil && l.ratio > 0 && l.read > l.floor && l.read/l.ratio > l.in.n {
		l.bomb = true
		return 0, errBomb
	}
	if l.left == 0 {
		// One byte more tells whether the stream ends exactly at the limit.
		var one [1]byte
		n, err := l.r.Read(one[:])
		if n > 0 {
			l.exceeded = true
			return 0, errTooLarge
		}
		if err != nil && err != io.EOF {
			l.err = err
		}
		return 0, err
	}
	if uint64(len(p)) > l.left {
		p = p[:l.left]
	}
	n, err := l.r.Read(p)
	l.left -= uint64(n)
	l.read += uint64(n)
	if err != nil && err != io.EOF {
		l.err = err
	}
	return n, err
}

// countingReader counts the bytes read from r.
type countingReader struct {
	r io.Reader
	n uint64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += uint64(n)
	return n, err
}

// commit hands the verified temporary file to the backend as the stored
// file for this hash; an existing file for the hash is replaced all the
// same: these bytes were just verified, that file may have rotted since (a
// path that Verify quarantined is pushed again to repair it).
func (s *Store) commit(ctx context.Context, tmp *os.File, nf *indexv1.NarFile) error {
	k, err := keyOfFile(nf)
	if err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return fmt.Errorf("rewind upload file: %w", err)
	}
	if err := s.files.Put(ctx, k, tmp, int64(nf.GetFileSize())); err != nil {
		return fmt.Errorf("store NAR file in %s: %w", s.files, err)
	}
	return nil
}
