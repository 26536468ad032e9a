package httpapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nixcache/nixcache/platform/auth"
	"github.com/nixcache/nixcache/services/gateway/internal/httpstatus"
)

// requestError is a mistake in the HTTP request itself, found by the
// gateway before any upstream call.
type requestError struct {
	status int
	msg    string
}

func (e *requestError) Error() string { return e.msg }

// clientError returns a requestError with status code and a formatted
// message meant for the client.
func clientError(code int, format string, args ...any) error {
	return &requestError{status: code, msg: fmt.Sprintf(format, args...)}
}

// writeError answers r with the HTTP form of err: its status and a
// text/plain body with the message, so `nix copy` shows the user why.
// Nothing is written when the client has gone away, unless err is the
// gateway's own judgement of the request: net/http ends the request's
// context when reading the body fails (the gateway's idle deadline, a body
// cut short) though the client may still be there to read why, and a
// handler that writes nothing answers 200.
func (h *Handler) writeError(w http.ResponseWriter, r *http.Request, err error) {
	var reqErr *requestError
	if r.Context().Err() != nil && !errors.As(err, &reqErr) {
		return
	}
	if reqErr != nil && reqErr.status == http.StatusRequestTimeout {
		// The rest of the body is not coming: the connection cannot
		// carry another request.
		w.Header().Set("Connection", "close")
	}
	code, msg := h.classify(r, err)
	httpstatus.SetErrorHeaders(w.Header(), code)
	writeText(w, code, msg)
}

// classify returns the HTTP status and message for err.
func (h *Handler) classify(r *http.Request, err error) (int, string) {
	var reqErr *requestError
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &reqErr):
		return reqErr.status, reqErr.msg
	case errors.As(err, &tooLarge):
		return http.StatusRequestEntityTooLarge, fmt.Sprintf("request body is larger than %d bytes", tooLarge.Limit)
	case errors.Is(err, auth.ErrUnauthenticated):
		return http.StatusUnauthorized, err.Error()
	case errors.Is(err, auth.ErrForbidden):
		return http.StatusForbidden, err.Error()
	case errors.Is(err, auth.ErrUnavailable):
		h.Log.WarnContext(r.Context(), "token not checked", "err", err)
		return http.StatusServiceUnavailable, err.Error()
	case errors.Is(err, context.DeadlineExceeded):
		return http.StatusServiceUnavailable, "index did not answer in time"
	}
	if st, ok := status.FromError(err); ok {
		code := httpstatus.FromCode(st.Code())
		if c := st.Code(); c == codes.Unauthenticated || c == codes.PermissionDenied {
			// The gateway let the caller through; the index, which
			// checks a write's token again, did not.
			h.Log.WarnContext(r.Context(), "the index refused credentials the gateway accepted: do both load the same token file (-auth-file)?",
				"code", c.String(), "err", st.Message())
			return code, "index: " + st.Message()
		}
		if code == http.StatusServiceUnavailable {
			h.Log.WarnContext(r.Context(), "upstream unavailable", "code", st.Code().String(), "err", st.Message())
		} else if code >= 500 {
			h.Log.ErrorContext(r.Context(), "upstream error", "code", st.Code().String(), "err", st.Message())
		}
		return code, st.Message()
	}
	h.Log.ErrorContext(r.Context(), "internal error", "err", err)
	return http.StatusInternalServerError, "internal error"
}

// writeText answers with a text/plain body, followed by a newline.
func writeText(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	fmt.Fprintln(w, msg)
}
