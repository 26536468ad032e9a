package httpapi

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
)

// byteRange is one satisfiable byte range of a representation.
type byteRange struct {
	start, length, total uint64
}

// contentRange is the Content-Range header of a 206 answer.
func (b byteRange) contentRange() string {
	return fmt.Sprintf("bytes %d-%d/%d", b.start, b.start+b.length-1, b.total)
}

// errUnsatisfiable means a Range header selects no byte of the
// representation (HTTP 416).
var errUnsatisfiable = errors.New("range not satisfiable")

// parseRange interprets a Range header against a representation of size
// bytes, as RFC 9110 section 14 says. It supports one range: "bytes=a-b",
// "bytes=a-" and "bytes=-n". It returns nil (serve everything) for a
// header it ignores: another unit, several ranges, or bad syntax.
func parseRange(spec string, size uint64) (*byteRange, error) {
	unit, set, ok := strings.Cut(strings.TrimSpace(spec), "=")
	if !ok || !strings.EqualFold(strings.TrimSpace(unit), "bytes") || strings.Contains(set, ",") {
		return nil, nil
	}
	first, last, ok := strings.Cut(strings.TrimSpace(set), "-")
	if !ok {
		return nil, nil
	}
	if first == "" {
		// Suffix range: the last n bytes.
		n, err := strconv.ParseUint(last, 10, 64)
		if err != nil {
			return nil, nil //nolint:nilerr // not a range we know: the whole NAR
		}
		if n == 0 || size == 0 {
			return nil, errUnsatisfiable
		}
		n = min(n, size)
		return &byteRange{start: size - n, length: n, total: size}, nil
	}
	start, err := strconv.ParseUint(first, 10, 64)
	if err != nil {
		return nil, nil //nolint:nilerr // as above
	}
	end := size - 1
	if last != "" {
		if end, err = strconv.ParseUint(last, 10, 64); err != nil || end < start {
			return nil, nil //nolint:nilerr // as above
		}
	}
	if start >= size {
		return nil, errUnsatisfiable
	}
	end = min(end, size-1)
	return &byteRange{start: start, length: end - start + 1, total: size}, nil
}

// answerRange resolves the request's Range header against a
// representation of size bytes that the handler serves itself: the first
// byte and the length to send, and the status, with Content-Range set.
// Without validators of our own, a conditional range (If-Range) can never
// be known to match: then everything is served, as RFC 9110 says. It
// reports false when it answered 416 itself.
func answerRange(w http.ResponseWriter, r *http.Request, size uint64) (start, length uint64, code int, ok bool) {
	spec := r.Header.Get("Range")
	if r.Header.Get("If-Range") != "" {
		spec = ""
	}
	rng, err := parseRange(spec, size)
	if err != nil { // errUnsatisfiable
		w.Header().Set("Content-Range", fmt.Sprintf("bytes */%d", size))
		writeText(w, http.StatusRequestedRangeNotSatisfiable, fmt.Sprintf("range %q not satisfiable: the NAR is %d bytes", spec, size))
		return 0, 0, 0, false
	}
	if rng == nil {
		return 0, size, http.StatusOK, true
	}
	w.Header().Set("Content-Range", rng.contentRange())
	return rng.start, rng.length, http.StatusPartialContent, true
}
