package httpapi

import (
	"net/http"

	"google.golang.org/grpc/codes"
)

// HTTPStatus is the gateway's one table from gRPC codes to HTTP statuses,
// exported so that the JSON admin API (package adminapi) answers with the
// same statuses as the Nix routes.
func HTTPStatus(c codes.Code) int { return httpStatus(c) }

// SetErrorHeaders adds the headers that go with an error answer of HTTP
// status code: a WWW-Authenticate challenge with 401 (Nix and curl answer
// it from a netrc file) and Retry-After with 503.
func SetErrorHeaders(h http.Header, code int) {
	switch code {
	case http.StatusUnauthorized:
		h.Set("WWW-Authenticate", `Basic realm="nixcache"`)
	case http.StatusServiceUnavailable:
		h.Set("Retry-After", retryAfter)
	}
}
