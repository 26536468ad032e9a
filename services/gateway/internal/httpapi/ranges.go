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

// wantsRange reports whether r asks for a range the gateway can serve.
// Without validators of our own, a conditional range (If-Range) can never
// be known to match: then everything is served, as RFC 9110 says.
func wantsRange(r *http.Request) bool {
	return r.Header.Get("Range") != "" && r.Header.Get("If-Range") == ""
}

// requestedRange resolves the request's Range header against a
// representation of size bytes: the range to send, or nil for everything.
// A range that selects no byte is an *unsatisfiableRange (416).
func requestedRange(r *http.Request, size uint64) (*byteRange, error) {
	if !wantsRange(r) {
		return nil, nil
	}
	spec := r.Header.Get("Range")
	rng, err := parseRange(spec, size)
	if err != nil { // errUnsatisfiable
		return nil, &unsatisfiableRange{size: size,
			err: clientError(http.StatusRequestedRangeNotSatisfiable, "range %q not satisfiable: the NAR is %d bytes", spec, size)}
	}
	return rng, nil
}

// span is the first byte and the length that rng selects of a
// representation of size bytes; nil selects everything.
func (rng *byteRange) span(size uint64) (start, length uint64) {
	if rng == nil {
		return 0, size
	}
	return rng.start, rng.length
}
