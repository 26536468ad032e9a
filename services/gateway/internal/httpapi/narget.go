package httpapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nixcache/nixcache/nix/compression"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
)

// A GET of a NAR is answered in two steps: openNar chooses where the
// bytes come from, and sendNar sends what it chose. The sources, in the
// order openNar tries them:
//
//   - a presigned URL of the stored file, when the index keeps its files
//     in a bucket (-nar-redirect): the client is redirected there;
//   - the stored file in the index's nars/ directory, co-located
//     (-nar-dir; fileNar, narfile.go);
//   - the NAR of a host path dumped from its store directory
//     (-local-store-dir; localNar, localnar.go);
//   - the index's GetNar stream, for everything else (streamNar), and
//     compressed with zstd on the way for a client that accepts it
//     (-zstd-local; sendZstd, zstd.go).

// narDownload is how one GET of a NAR is answered, as its source chose
// it: a URL to redirect the client to, or a body to send, whole or one
// range of it.
type narDownload struct {
	// redirect is a presigned URL of the file; the answer is 307 to it,
	// and the other fields are unset.
	redirect string
	// body sends length bytes: the NAR's or the file's, from the range's
	// first byte.
	body   narBody
	length uint64
	// rng is the range body sends (206); nil: everything (200).
	rng *byteRange
	// zstd: body is compressed with zstd on the way, whole, of a length
	// unknown in advance.
	zstd bool
	// sendfile: body goes out with sendfile (a file, a dump), on a
	// corked connection (cork.go).
	sendfile bool
	// cut is what the log says when sending stops short.
	cut string
	// close releases the source (a file, a dump, a stream); nil: nothing.
	close func()
}

// narBody is the bytes of a NAR download.
type narBody interface {
	// send writes n bytes to dst, each step under the transfer's idle
	// deadline. dst is w, or an encoder writing to w: the stream's body
	// only, since openNar compresses nothing else; a file or a dump
	// goes to w itself, which sends it with sendfile.
	send(w http.ResponseWriter, dst io.Writer, n uint64) error
}

// unsatisfiableRange is an error answered 416 with a Content-Range that
// states the size of the representation.
type unsatisfiableRange struct {
	size uint64
	err  error // the answer
}

func (e *unsatisfiableRange) Error() string { return e.err.Error() }

// getNar answers GET /nar/...: the NAR, whole or one byte range of it, or
// a redirect to where it can be downloaded.
func (h *Handler) getNar(w http.ResponseWriter, r *http.Request) {
	t, err := parseNarPath(r.URL.Path)
	if err != nil {
		h.writeError(w, r, err)
		return
	}
	d, err := h.openNar(r, w.Header(), t)
	if err != nil {
		var unsat *unsatisfiableRange
		if errors.As(err, &unsat) {
			w.Header().Set("Content-Range", fmt.Sprintf("bytes */%d", unsat.size))
			err = unsat.err
		}
		h.writeError(w, r, err)
		return
	}
	if d.close != nil {
		defer d.close()
	}
	h.sendNar(w, r, d)
}

// openNar chooses the source of the NAR t names (see above). It sets
// nothing in hdr, the answer's header, but Vary when the answer depends
// on Accept-Encoding.
func (h *Handler) openNar(r *http.Request, hdr http.Header, t narTarget) (*narDownload, error) {
	if h.NarRedirect && t.fileHash != "" {
		url, err := h.presignedNar(r.Context(), r.URL.Path, t)
		if err != nil {
			return nil, err
		}
		if url != "" {
			return &narDownload{redirect: url}, nil
		}
	}
	// An uncompressed NAR may be compressed on the fly for a client that
	// accepts zstd (-zstd-local): whole, of a length unknown in advance.
	zstdOut := false
	if h.ZstdLocal && t.compression == compression.None {
		hdr.Add("Vary", "Accept-Encoding")
		zstdOut = acceptsZstd(r.Header)
	}
	if h.narRoot != nil && t.fileHash != "" && !zstdOut {
		if d, err := h.fileNar(r, t); d != nil || err != nil {
			return d, err
		}
	}
	if h.LocalStoreDir != "" && t.storeHash != "" && !zstdOut {
		if d, err := h.localNar(r, t); d != nil || err != nil {
			return d, err
		}
	}
	return h.streamNar(r, t, zstdOut)
}

// sendNar answers with what openNar chose.
func (h *Handler) sendNar(w http.ResponseWriter, r *http.Request, d *narDownload) {
	switch {
	case d.redirect != "":
		// The URL works for anyone until it expires: no shared cache
		// may keep the redirect.
		w.Header().Set("Cache-Control", "no-store")
		http.Redirect(w, r, d.redirect, http.StatusTemporaryRedirect)
		return
	case d.zstd:
		h.sendZstd(w, r, d.body, d.length)
		return
	}
	code := http.StatusOK
	if d.rng != nil {
		w.Header().Set("Content-Range", d.rng.contentRange())
		code = http.StatusPartialContent
	}
	setNarHeaders(w, d.length)
	if d.sendfile {
		defer cork(r.Context())()
	}
	w.WriteHeader(code)
	err := d.body.send(w, w, d.length)
	if err == nil && d.sendfile {
		// What net/http still buffers (a dump's last small writes) goes
		// out with the rest, before the cork comes out.
		err = http.NewResponseController(w).Flush()
	}
	if err != nil && r.Context().Err() == nil {
		// The status is sent; the connection closes short of
		// Content-Length, and Nix resumes with a Range request.
		h.Log.WarnContext(r.Context(), d.cut, "path", r.URL.Path, "err", err)
	}
}

// streamNar is the NAR t names as the index streams it (GetNar): a
// stored file, or a host path's NAR dumped by the index; compressed with
// zstd on the way when zstdOut and the NAR is uncompressed.
func (h *Handler) streamNar(r *http.Request, t narTarget, zstdOut bool) (_ *narDownload, err error) {
	req := t.getRequest()
	var rng *byteRange
	if wantsRange(r) && !zstdOut {
		size, err := h.narSize(r.Context(), r.URL.Path, t)
		if err != nil {
			return nil, err
		}
		if rng, err = requestedRange(r, size); err != nil {
			return nil, err
		}
		if rng != nil {
			req.Offset, req.Length = rng.start, rng.length
		}
	}

	ctx, cancel := context.WithCancelCause(r.Context())
	defer func() {
		if err != nil {
			cancel(nil)
		}
	}()
	guard := h.newStallGuard(cancel)
	var stream indexv1.IndexService_GetNarClient
	if err := guard.open("NAR", func() (err error) {
		stream, err = h.Index.GetNar(ctx, req, narStreamCodec())
		return err
	}); err != nil {
		return nil, stalledError(ctx, err)
	}
	hdr, err := recvHeader(h, ctx, cancel, stream.Recv, "NAR")
	if err != nil {
		if rng != nil && status.Code(err) == codes.OutOfRange {
			// The index refuses a range of a compressed file's NAR that
			// would cost decompressing all before it: 416, saying why.
			return nil, &unsatisfiableRange{size: rng.total, err: err}
		}
		return nil, err
	}
	if t.fileHash != "" && hdr.GetCompression() != t.compression {
		return nil, errNoSuchNar(r.URL.Path, "the file is compressed with "+hdr.GetCompression())
	}
	d := &narDownload{
		// From here every chunk must come within TransferIdleTimeout.
		body:   &streamBody{h: h, ctx: ctx, stream: guardRecv(stream, guard)},
		length: hdr.GetTotalSize(),
		cut:    "NAR stream cut",
		close:  func() { cancel(nil) },
	}
	if zstdOut && hdr.GetCompression() == compression.None {
		d.zstd = true
		return d, nil
	}
	if rng != nil {
		if hdr.GetTotalSize() != rng.total {
			return nil, fmt.Errorf("index streams %d bytes for %s, it stated %d", hdr.GetTotalSize(), r.URL.Path, rng.total)
		}
		d.rng, d.length = rng, rng.length
	}
	return d, nil
}

// streamBody is the chunks of a GetNar stream after its header.
type streamBody struct {
	h      *Handler
	ctx    context.Context // the stream's: its cause says whether the guard cut it
	stream indexv1.IndexService_GetNarClient
}

func (b *streamBody) send(w http.ResponseWriter, dst io.Writer, n uint64) error {
	if err := b.h.copyNar(w, dst, b.stream, n); err != nil {
		return stalledError(b.ctx, err)
	}
	return nil
}

// copyNar writes the chunks of stream to dst (w, or an encoder writing to
// w) as they come; want is the number of bytes the stream must carry. A
// chunk is written before the next is received: with narStreamCodec the
// next overwrites it.
func (h *Handler) copyNar(w http.ResponseWriter, dst io.Writer, stream indexv1.IndexService_GetNarClient, want uint64) error {
	rc := http.NewResponseController(w)
	var sent uint64
	for {
		msg, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("receive from index after %d bytes: %w", sent, err)
		}
		chunk := msg.GetChunk()
		if msg.GetHeader() != nil {
			return fmt.Errorf("index sent a second header after %d bytes", sent)
		}
		if sent+uint64(len(chunk)) > want {
			return fmt.Errorf("index sent more than the %d bytes announced", want)
		}
		if h.TransferIdleTimeout > 0 {
			_ = rc.SetWriteDeadline(time.Now().Add(h.TransferIdleTimeout))
		}
		if _, err := dst.Write(chunk); err != nil {
			return fmt.Errorf("write to client after %d bytes: %w", sent, err)
		}
		// Chunks are large; flushing each lets a slow index's bytes reach
		// the client as they come.
		if err := rc.Flush(); err != nil {
			return fmt.Errorf("write to client after %d bytes: %w", sent, err)
		}
		sent += uint64(len(chunk))
	}
	if sent != want {
		return fmt.Errorf("index ended the stream after %d of %d bytes", sent, want)
	}
	return nil
}
