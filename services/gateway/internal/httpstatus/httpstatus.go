// Package httpstatus is the gateway's one table from gRPC codes to HTTP
// statuses, and the headers that go with an error answer: the Nix routes
// (package httpapi) and the JSON admin API (package adminapi) answer the
// index's errors alike.
package httpstatus

import (
	"net/http"

	"google.golang.org/grpc/codes"
)

// RetryAfter is what 503 answers tell clients to wait, in seconds. Nix
// honours it.
const RetryAfter = "5"

// FromCode is the one table from gRPC codes to HTTP statuses.
func FromCode(c codes.Code) int {
	switch c {
	case codes.NotFound:
		return http.StatusNotFound
	case codes.InvalidArgument, codes.FailedPrecondition:
		return http.StatusBadRequest
	case codes.AlreadyExists, codes.Aborted:
		return http.StatusConflict
	case codes.OutOfRange:
		return http.StatusRequestedRangeNotSatisfiable
	case codes.Unauthenticated:
		return http.StatusUnauthorized
	case codes.PermissionDenied:
		return http.StatusForbidden
	case codes.ResourceExhausted:
		return http.StatusRequestEntityTooLarge
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
		// Canceled while the client is still there: the index or the
		// gateway is going away.
		return http.StatusServiceUnavailable
	case codes.Unimplemented:
		return http.StatusNotImplemented
	default:
		return http.StatusInternalServerError
	}
}

// SetErrorHeaders adds the headers that go with an error answer of HTTP
// status code: a WWW-Authenticate challenge with 401 (Nix and curl answer
// it from a netrc file) and Retry-After with 503.
func SetErrorHeaders(h http.Header, code int) {
	switch code {
	case http.StatusUnauthorized:
		h.Set("WWW-Authenticate", `Basic realm="nixcache"`)
	case http.StatusServiceUnavailable:
		h.Set("Retry-After", RetryAfter)
	}
}
