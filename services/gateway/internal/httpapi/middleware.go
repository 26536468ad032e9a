package httpapi

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"net/http"
)

// requestIDHeader carries the request id in requests and responses.
const requestIDHeader = "X-Request-Id"

// maxRequestIDLen bounds a request id taken from a client.
const maxRequestIDLen = 128

// requestID returns the client's X-Request-Id when it is sane, or a new one.
func requestID(r *http.Request) string {
	if id := r.Header.Get(requestIDHeader); validRequestID(id) {
		return id
	}
	var b [12]byte
	_, _ = rand.Read(b[:])
	var id [2 * len(b)]byte
	hex.Encode(id[:], b[:])
	return string(id[:])
}

func validRequestID(id string) bool {
	if id == "" || len(id) > maxRequestIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		ok := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.'
		if !ok {
			return false
		}
	}
	return true
}

// recorder remembers the status and body size of a response, and who
// sent the request, for the access log.
type recorder struct {
	http.ResponseWriter
	code  int
	bytes int64
	user  string // the token's name; "" when anonymous
}

func (r *recorder) WriteHeader(code int) {
	if r.code == 0 {
		r.code = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(p []byte) (int, error) {
	if r.code == 0 {
		r.code = http.StatusOK
	}
	n, err := r.ResponseWriter.Write(p)
	r.bytes += int64(n)
	return n, err
}

// WriteString passes s on without copying it into a []byte (net/http's
// ResponseWriter has a WriteString).
func (r *recorder) WriteString(s string) (int, error) {
	if r.code == 0 {
		r.code = http.StatusOK
	}
	n, err := io.WriteString(r.ResponseWriter, s)
	r.bytes += int64(n)
	return n, err
}

// ReadFrom passes src on to the ResponseWriter below, so that a file
// reaches net/http's connection whole and goes out with sendfile (io.Copy
// through Write alone would copy it in 32 KiB buffers).
func (r *recorder) ReadFrom(src io.Reader) (int64, error) {
	if r.code == 0 {
		r.code = http.StatusOK
	}
	n, err := io.Copy(r.ResponseWriter, src)
	r.bytes += n
	return n, err
}

// Unwrap lets http.ResponseController reach the connection.
func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// statusClientClosed is nginx's "client closed request", logged when the
// client went away before an answer was written.
const statusClientClosed = 499

// status returns the response status for the access log.
func (r *recorder) status(ctx context.Context) int {
	switch {
	case r.code != 0:
		return r.code
	case ctx.Err() != nil:
		return statusClientClosed
	default:
		return http.StatusOK
	}
}
