package httpstatus

import (
	"net/http"
	"testing"

	"google.golang.org/grpc/codes"
)

func TestFromCode(t *testing.T) {
	tests := []struct {
		code codes.Code
		want int
	}{
		{codes.OK, 500}, // never an error's code; not a success either
		{codes.Canceled, 503},
		{codes.Unknown, 500},
		{codes.InvalidArgument, 400},
		{codes.DeadlineExceeded, 503},
		{codes.NotFound, 404},
		{codes.AlreadyExists, 409},
		{codes.PermissionDenied, 403},
		{codes.ResourceExhausted, 413},
		{codes.FailedPrecondition, 400},
		{codes.Aborted, 409},
		{codes.OutOfRange, 416},
		{codes.Unimplemented, 501},
		{codes.Internal, 500},
		{codes.Unavailable, 503},
		{codes.DataLoss, 500},
		{codes.Unauthenticated, 401},
	}
	for _, tt := range tests {
		if got := FromCode(tt.code); got != tt.want {
			t.Errorf("FromCode(%s) = %d, want %d", tt.code, got, tt.want)
		}
	}
}

func TestSetErrorHeaders(t *testing.T) {
	tests := []struct {
		code                int
		wwwAuth, retryAfter string
	}{
		{http.StatusUnauthorized, `Basic realm="nixcache"`, ""},
		{http.StatusServiceUnavailable, "", RetryAfter},
		{http.StatusForbidden, "", ""},
		{http.StatusInternalServerError, "", ""},
	}
	for _, tt := range tests {
		h := http.Header{}
		SetErrorHeaders(h, tt.code)
		if got := h.Get("WWW-Authenticate"); got != tt.wwwAuth {
			t.Errorf("%d: WWW-Authenticate %q, want %q", tt.code, got, tt.wwwAuth)
		}
		if got := h.Get("Retry-After"); got != tt.retryAfter {
			t.Errorf("%d: Retry-After %q, want %q", tt.code, got, tt.retryAfter)
		}
	}
}
