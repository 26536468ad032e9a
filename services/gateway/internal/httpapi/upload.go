package httpapi

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"time"

	"google.golang.org/grpc"

	"github.com/nixcache/nixcache/platform/grpcutil"
)

// upload is a request body on its way to the index (a NAR, an artifact):
// the one loop that reads it, and what to answer when reading it fails.
type upload struct {
	// what names the upload in messages ("NAR upload").
	what string
	// raw is the body as the client sends it, through its size limit if
	// any; its own error tells the client's failures from a decoder's.
	raw *readErr
	// body is what goes to the index: raw, or its decoding.
	body io.Reader
	// limit is raw's size limit and the decoded one (0: none here).
	limit int64
	// encoding is the Content-Encoding body is decoded from ("": none).
	encoding string
}

// newUpload is the upload of r's body, limited to limit bytes (0: no
// limit here).
func newUpload(w http.ResponseWriter, r *http.Request, what string, limit int64) *upload {
	var body io.Reader = r.Body
	if limit > 0 {
		body = http.MaxBytesReader(w, r.Body, limit)
	}
	raw := &readErr{r: body}
	return &upload{what: what, raw: raw, body: raw, limit: limit}
}

// decode has the upload decoded from encoding, at most limit bytes of it.
// The caller closes the returned decoder.
func (u *upload) decode(encoding string) (io.Closer, error) {
	dec, err := decoder(encoding, u.raw)
	if err != nil {
		return nil, clientError(http.StatusBadRequest, "decode %s (Content-Encoding %s): %v", u.what, encoding, err)
	}
	u.encoding = encoding
	u.body = dec
	if u.limit > 0 {
		u.body = &limitedDecode{r: dec, left: u.limit}
	}
	return dec, nil
}

// stream reads the upload in chunks of grpcutil.ChunkSize and sends each
// with send, giving the client TransferIdleTimeout (extended before each
// read) to send more. A failure of the client's side is a *requestError:
// 408 when it sent nothing for TransferIdleTimeout, 413 past the limit,
// 400 for a body cut short or that does not decode. An error of send
// comes back as is (io.EOF: the index ended the call; its status comes
// with CloseAndRecv).
//
// One buffer serves every chunk: when send returns, gRPC has encoded the
// message into its own buffer (it keeps the message itself only for a
// stats handler or tracing, which these connections do not have), and a
// fresh zeroed 256 KiB buffer per chunk cost a push a third of the
// gateway's CPU in allocation and GC.
func (h *Handler) streamUpload(w http.ResponseWriter, u *upload, send func([]byte) error) error {
	rc := http.NewResponseController(w)
	buf := make([]byte, grpcutil.ChunkSize)
	for {
		if h.TransferIdleTimeout > 0 {
			_ = rc.SetReadDeadline(time.Now().Add(h.TransferIdleTimeout))
		}
		n, err := fill(u.body, buf)
		if err != nil && err != io.EOF {
			// Judged before anything is sent: the failure that ended the
			// request's context may fail a send too.
			return h.uploadError(u, err)
		}
		if n > 0 {
			if err := send(buf[:n]); err != nil {
				return err
			}
		}
		if err == io.EOF {
			return nil
		}
	}
}

// sendUpload streams u to the index over the client stream open opens
// (PutNar, PutArtifact; what names it in errors): header first, then u's
// chunks, each in the message chunk makes. An index that does not open
// the stream, stops taking chunks, or does not answer after the last,
// cannot hold the upload forever (stallGuard). The error is the answer: a
// *requestError when the client's side failed (the stream is cancelled
// before anything could close it: a cut upload must never look complete
// to the index), else the index's, from CloseAndRecv (Send fails with
// io.EOF when the index has ended the call; its status comes with
// CloseAndRecv).
func sendUpload[Req, Res any](h *Handler, w http.ResponseWriter, r *http.Request, u *upload, what string,
	open func(context.Context) (grpc.ClientStreamingClient[Req, Res], error), header *Req, chunk func([]byte) *Req) error {
	ctx, cancel := context.WithCancelCause(r.Context())
	defer cancel(nil)
	guard := h.newStallGuard(cancel)
	var raw grpc.ClientStreamingClient[Req, Res]
	if err := guard.open(what, func() (err error) {
		raw, err = open(ctx)
		return err
	}); err != nil {
		return stalledError(ctx, err)
	}
	stream := guardSend(raw, guard)
	err := stream.Send(header)
	if err == nil {
		err = h.streamUpload(w, u, func(b []byte) error { return stream.Send(chunk(b)) })
	}
	var reqErr *requestError
	if errors.As(err, &reqErr) {
		cancel(nil)
		return err
	}
	if _, err := stream.CloseAndRecv(); err != nil {
		return stalledError(ctx, err)
	}
	return nil
}

// uploadError is the answer to a failure err reading u.
func (h *Handler) uploadError(u *upload, err error) error {
	var tooLarge *http.MaxBytesError
	switch {
	case errors.Is(u.raw.err, os.ErrDeadlineExceeded):
		return clientError(http.StatusRequestTimeout, "%s: the client sent nothing for %s (-transfer-idle-timeout)", u.what, h.TransferIdleTimeout)
	case errors.As(u.raw.err, &tooLarge), errors.Is(err, errDecodedTooLarge):
		return clientError(http.StatusRequestEntityTooLarge, "%s is larger than %d bytes", u.what, u.limit)
	case u.raw.err != nil:
		return clientError(http.StatusBadRequest, "read %s: %v", u.what, u.raw.err)
	default:
		return clientError(http.StatusBadRequest, "decode %s (Content-Encoding %s): %v", u.what, u.encoding, err)
	}
}

// fill reads into buf until it is full or r fails; unlike io.ReadFull it
// returns io.EOF only for a clean end, whatever it read before, so a body
// cut short (io.ErrUnexpectedEOF from net/http) stays an error.
func fill(r io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

var errDecodedTooLarge = errors.New("decoded upload too large")

// limitedDecode fails once more than left bytes were decoded.
type limitedDecode struct {
	r    io.Reader
	left int64
}

func (l *limitedDecode) Read(p []byte) (int, error) {
	n, err := l.r.Read(p)
	l.left -= int64(n)
	if l.left < 0 {
		return n, errDecodedTooLarge
	}
	return n, err
}
