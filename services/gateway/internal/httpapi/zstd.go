package httpapi

import (
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// zstdWindow is the encoders' window: small, to keep each encoder's memory
// at a few MiB however many NARs stream at once; the level is the fastest,
// since this only pays off on links slower than the compression.
const zstdWindow = 1 << 20

// zstdEncoders are reused between responses: an encoder's tables cost more
// to build than a small NAR costs to compress.
var zstdEncoders = sync.Pool{New: func() any {
	enc, err := zstd.NewWriter(nil,
		zstd.WithEncoderLevel(zstd.SpeedFastest),
		zstd.WithEncoderConcurrency(1),
		zstd.WithWindowSize(zstdWindow),
		zstd.WithLowerEncoderMem(true))
	if err != nil {
		panic(err) // only for invalid options
	}
	return enc
}}

// acceptsZstd reports whether an Accept-Encoding header lists zstd with a
// non-zero quality (RFC 9110 section 12.5.3).
func acceptsZstd(h http.Header) bool {
	for _, v := range h.Values("Accept-Encoding") {
		for _, item := range strings.Split(v, ",") {
			coding, params, _ := strings.Cut(item, ";")
			if !strings.EqualFold(strings.TrimSpace(coding), "zstd") {
				continue
			}
			q := 1.0
			for _, p := range strings.Split(params, ";") {
				k, val, ok := strings.Cut(strings.TrimSpace(p), "=")
				if ok && strings.EqualFold(strings.TrimSpace(k), "q") {
					if f, err := strconv.ParseFloat(strings.TrimSpace(val), 64); err == nil {
						q = f
					}
				}
			}
			return q > 0
		}
	}
	return false
}

// sendZstd answers with the whole NAR of body (total bytes) compressed
// with zstd: Content-Encoding zstd, no Content-Length, no ranges. A stream
// cut short aborts the response, so that no client or proxy takes the
// truncated body for a complete one.
func (h *Handler) sendZstd(w http.ResponseWriter, r *http.Request, body narBody, total uint64) {
	w.Header().Set("Content-Type", narContentType)
	w.Header().Set("Content-Encoding", "zstd")
	w.WriteHeader(http.StatusOK)
	enc := zstdEncoders.Get().(*zstd.Encoder)
	enc.Reset(w)
	err := body.send(w, enc, total)
	if err == nil {
		err = enc.Close()
	}
	enc.Reset(io.Discard) // drop w
	zstdEncoders.Put(enc)
	if err == nil {
		err = http.NewResponseController(w).Flush()
	}
	if err != nil {
		if r.Context().Err() == nil {
			h.Log.WarnContext(r.Context(), "NAR stream cut", "path", r.URL.Path, "encoding", "zstd", "err", err)
		}
		panic(http.ErrAbortHandler)
	}
}
