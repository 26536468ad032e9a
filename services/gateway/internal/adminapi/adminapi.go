// Package adminapi serves the index's AdminService as a JSON API under
// /api/v1/ (the routes are in proto/nixcache/index/v1/admin_api.yaml),
// through grpc-gateway over the gateway's shared index connection.
//
// The gateway does not judge credentials here: the caller's Authorization
// header goes to the index as the gRPC metadata "authorization", and the
// index checks its scopes, exactly as for a grpcurl call. The request id
// travels in the context (grpcutil's client interceptors send it).
//
// JSON is protojson with the .proto field names (snake_case, what grpcurl -d
// takes and prints) and every field present, zeros included, so that
// scripts need not know proto3's defaulting rules; 64-bit integers are
// strings and durations "<seconds>s", as protojson writes them. Requests may
// use either snake_case or lowerCamelCase names; unknown fields are refused.
// Server-streaming methods (verify, gc, adding and retiring keys) answer with
// newline-delimited JSON, one {"result": ...} object per progress message,
// flushed as it arrives; an error after the first message is a final
// {"error": ...} line. Errors are google.rpc.Status objects
// ({"code", "message", "details"}) with the HTTP status the gateway's one
// code table gives (httpstatus.FromCode), so the JSON and Nix routes agree.
// Cross-origin browser requests that change anything are refused (CSRF).
//
// Every request that changes anything (any method but GET and HEAD) needs
// the admin scope at the index. The gateway refuses one that cannot have
// it before it reads a byte of the body: without credentials, or, when the
// gateway has tokens of its own, without a token of the admin scope. A body
// is read through a limit (Config.MaxBodySize): past it the answer is 413.
package adminapi

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/nixcache/nixcache/platform/auth"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/gateway/internal/httpstatus"
)

// Prefix is the path prefix the API is served under.
const Prefix = "/api/v1/"

// MaxBodySize bounds the body of the largest request, FindMissingPaths'
// (10,000 store paths take about 1 MiB); every other route takes
// Config.MaxBodySize.
const MaxBodySize = 4 << 20

// readRoutes are the routes that change nothing although they are not a
// GET: they need the read scope, not admin, and may carry a larger body
// (MaxBodySize).
var readRoutes = map[string]bool{Prefix + "missing-paths": true}

// Config configures New.
type Config struct {
	// Index is the connection to the index; it is shared, not owned.
	Index grpc.ClientConnInterface
	// RequestTimeout bounds each unary call. Streaming calls (verify, gc,
	// keys) run until they finish or the client goes away.
	RequestTimeout time.Duration
	Log            *slog.Logger
	// Auth is the gateway's own policy: with tokens, a change needs one
	// of the admin scope here already; without, it needs credentials,
	// which the index judges.
	Auth auth.Policy
	// MaxBodySize bounds a request body; 0 means DefaultMaxBodySize.
	MaxBodySize int64
	// BodyTimeout bounds how long a request body may take to arrive; 0
	// means DefaultBodyTimeout.
	BodyTimeout time.Duration
}

// DefaultBodyTimeout bounds the arrival of an admin request's body when
// the Config says nothing: it is small.
const DefaultBodyTimeout = 15 * time.Second

// DefaultMaxBodySize bounds an admin request's body when the Config says
// nothing: the largest request (a pin or a key) is well under a KiB.
const DefaultMaxBodySize = 64 << 10

// Handler serves the JSON admin API.
type Handler struct {
	mux         *runtime.ServeMux
	handler     http.Handler // mux, behind the cross-origin check
	log         *slog.Logger
	auth        auth.Policy
	maxBody     int64
	bodyTimeout time.Duration
}

// New returns the JSON admin API handler.
func New(cfg Config) (*Handler, error) {
	switch {
	case cfg.Index == nil:
		return nil, errors.New("adminapi: index connection is required")
	case cfg.RequestTimeout <= 0:
		return nil, errors.New("adminapi: request timeout must be positive")
	case cfg.Log == nil:
		return nil, errors.New("adminapi: logger is required")
	case cfg.MaxBodySize < 0:
		return nil, errors.New("adminapi: max body size must not be negative")
	case cfg.BodyTimeout < 0:
		return nil, errors.New("adminapi: body timeout must not be negative")
	}
	h := &Handler{log: cfg.Log, auth: cfg.Auth, maxBody: cmp.Or(cfg.MaxBodySize, DefaultMaxBodySize),
		bodyTimeout: cmp.Or(cfg.BodyTimeout, DefaultBodyTimeout)}
	h.mux = runtime.NewServeMux(
		runtime.WithMarshalerOption(runtime.MIMEWildcard, marshaler),
		// Only Authorization goes to the index (grpc-gateway always passes
		// it on as "authorization"); no other header becomes metadata.
		runtime.WithIncomingHeaderMatcher(func(string) (string, bool) { return "", false }),
		runtime.WithErrorHandler(h.writeError),
		runtime.WithRoutingErrorHandler(h.routingError),
		runtime.WithStreamErrorHandler(h.streamError),
		// Path segments are unescaped in full ("gtk%2B3" is "gtk+3");
		// an escaped slash separates segments (see baseNameArg).
		runtime.WithUnescapingMode(runtime.UnescapingModeAllCharacters),
		runtime.WithMiddlewares(h.checkChange),
	)
	client := indexv1.NewAdminServiceClient(unaryTimeout{cfg.Index, cfg.RequestTimeout})
	if err := indexv1.RegisterAdminServiceHandlerClient(context.Background(), h.mux, client); err != nil {
		return nil, fmt.Errorf("adminapi: register routes: %w", err)
	}
	// A browser that holds the cache's Basic credentials (after a 401
	// prompt) would attach them to a form another site posts here:
	// refuse cross-origin browser requests that change anything. curl and
	// grpc-gateway clients send no Origin or Sec-Fetch-Site and pass.
	cop := http.NewCrossOriginProtection()
	cop.SetDenyHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.writeError(r.Context(), h.mux, marshaler, w, r, &runtime.HTTPStatusError{
			HTTPStatus: http.StatusForbidden,
			Err:        status.Error(codes.PermissionDenied, "cross-origin request refused: the admin API takes changes only from its own origin or non-browser clients"),
		})
	}))
	h.handler = cop.Handler(http.HandlerFunc(h.serve))
	return h, nil
}

// ServeHTTP serves one API request.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.handler.ServeHTTP(w, r)
}

// serve serves one API request that passed the cross-origin check.
func (h *Handler) serve(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	sw := &statusWriter{ResponseWriter: w}
	r = baseNameArg(r.WithContext(context.WithValue(r.Context(), statusWriterKey{}, sw)))
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		// A body that does not arrive promptly is not coming; the
		// deadline goes before the answer, which may stream for long.
		rc := http.NewResponseController(sw)
		_ = rc.SetReadDeadline(time.Now().Add(h.bodyTimeout))
		defer rc.SetReadDeadline(time.Time{})
	}
	limit := h.maxBody
	if readRoutes[r.URL.Path] {
		limit = max(limit, MaxBodySize)
	}
	r.Body = &limitedBody{ReadCloser: http.MaxBytesReader(sw, r.Body, limit), sw: sw}
	h.mux.ServeHTTP(sw, r)
}

// checkChange runs, for a request a route matched, before the route's
// handler reads the body: unknown routes stay 404 and 405.
func (h *Handler) checkChange(next runtime.HandlerFunc) runtime.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request, params map[string]string) {
		if err := h.authorizeChange(r); err != nil {
			h.writeError(r.Context(), h.mux, marshaler, w, r, err)
			return
		}
		next(w, r, params)
	}
}

// authorizeChange refuses, before its body is read, a request that
// changes something and cannot have the admin scope at the index.
func (h *Handler) authorizeChange(r *http.Request) error {
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		return nil
	}
	var err error
	switch {
	case readRoutes[r.URL.Path]:
		// Judged as a read: by the gateway's tokens when it has them, by
		// the index in any case.
		if h.auth.Tokens != nil {
			_, err = h.auth.Authorize(r, auth.Read)
		}
	case h.auth.Tokens != nil:
		_, err = h.auth.Authorize(r, auth.Admin)
	case r.Header.Get("Authorization") == "":
		err = fmt.Errorf("%w: %s %s needs a token with the admin scope", auth.ErrUnauthenticated, r.Method, r.URL.Path)
	}
	switch {
	case errors.Is(err, auth.ErrUnauthenticated):
		return &runtime.HTTPStatusError{HTTPStatus: http.StatusUnauthorized, Err: status.Error(codes.Unauthenticated, err.Error())}
	case errors.Is(err, auth.ErrForbidden):
		return &runtime.HTTPStatusError{HTTPStatus: http.StatusForbidden, Err: status.Error(codes.PermissionDenied, err.Error())}
	case errors.Is(err, auth.ErrUnavailable):
		// The token could not be checked (the index is down): never a
		// 500, and never accepted.
		return status.Error(codes.Unavailable, err.Error())
	}
	return err
}

// limitedBody is a request body read through http.MaxBytesReader that
// tells the statusWriter when the limit cut it: grpc-gateway reports the
// decoding error as InvalidArgument, the answer is 413.
type limitedBody struct {
	io.ReadCloser
	sw *statusWriter
}

func (b *limitedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		b.sw.tooLarge = tooLarge.Limit
	case errors.Is(err, os.ErrDeadlineExceeded):
		b.sw.bodyTimedOut = true
	}
	return n, err
}

// pathArgPrefixes are the routes whose last segment is a store path.
var pathArgPrefixes = []string{Prefix + "paths/", Prefix + "pins/"}

// baseNameArg rewrites a request for /api/v1/paths/<absolute store path>
// (slashes escaped or not, as `curl .../api/v1/paths/$(readlink result)`
// sends it) to the path's base name, which the index takes as well:
// grpc-gateway binds {path} to a single segment.
func baseNameArg(r *http.Request) *http.Request {
	for _, prefix := range pathArgPrefixes {
		rest, ok := strings.CutPrefix(r.URL.Path, prefix)
		if !ok || !strings.Contains(rest, "/") {
			continue
		}
		u := *r.URL
		u.Path = prefix + rest[strings.LastIndexByte(rest, '/')+1:]
		u.RawPath = ""
		r2 := *r
		r2.URL = &u
		return &r2
	}
	return r
}

// marshaler writes and reads the API's JSON (see the package comment).
var marshaler = ndjson{&runtime.JSONPb{
	MarshalOptions:   protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true},
	UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: false},
}}

// ndjson is JSONPb that labels streamed answers as newline-delimited JSON.
type ndjson struct{ *runtime.JSONPb }

// StreamContentType implements runtime.StreamContentType.
func (ndjson) StreamContentType(any) string { return "application/x-ndjson" }

// unaryTimeout bounds unary calls on a connection and leaves streams be.
type unaryTimeout struct {
	grpc.ClientConnInterface
	d time.Duration
}

func (c unaryTimeout) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	ctx, cancel := context.WithTimeout(ctx, c.d)
	defer cancel()
	return c.ClientConnInterface.Invoke(ctx, method, args, reply, opts...)
}

// writeError answers with err as a JSON google.rpc.Status and the HTTP
// status of the gateway's code table (or the one a routing error carries).
func (h *Handler) writeError(ctx context.Context, _ *runtime.ServeMux, m runtime.Marshaler, w http.ResponseWriter, r *http.Request, err error) {
	code := 0
	var withStatus *runtime.HTTPStatusError
	if errors.As(err, &withStatus) {
		code, err = withStatus.HTTPStatus, withStatus.Err
	}
	st := status.Convert(err)
	if sw, ok := ctx.Value(statusWriterKey{}).(*statusWriter); ok {
		switch {
		case sw.tooLarge > 0:
			code = http.StatusRequestEntityTooLarge
			st = status.Newf(codes.InvalidArgument, "request body is larger than %d bytes", sw.tooLarge)
		case sw.bodyTimedOut:
			code = http.StatusRequestTimeout
			st = status.Newf(codes.InvalidArgument, "request body not received within %s", h.bodyTimeout)
			w.Header().Set("Connection", "close")
		}
	}
	if code == 0 {
		code = h.statusOf(r, st)
	}
	body, merr := m.Marshal(st.Proto())
	if merr != nil {
		h.log.ErrorContext(ctx, "marshal admin api error", "err", merr)
		code, body = http.StatusInternalServerError, []byte(`{"code":13,"message":"internal error","details":[]}`)
	}
	hdr := w.Header()
	hdr.Del("Trailer")
	hdr.Del("Transfer-Encoding")
	hdr.Set("Content-Type", "application/json")
	httpstatus.SetErrorHeaders(hdr, code)
	w.WriteHeader(code)
	_, _ = w.Write(append(body, '\n'))
}

// routingError answers a request no route matches: 404, or 405 for a known
// path with another method.
func (h *Handler) routingError(ctx context.Context, mux *runtime.ServeMux, m runtime.Marshaler, w http.ResponseWriter, r *http.Request, httpStatus int) {
	var err error
	switch httpStatus {
	case http.StatusNotFound:
		err = status.Errorf(codes.NotFound, "no admin API route %s %s", r.Method, r.URL.Path)
	case http.StatusMethodNotAllowed:
		err = status.Errorf(codes.Unimplemented, "method %s not allowed on %s", r.Method, r.URL.Path)
	default:
		err = status.Error(codes.InvalidArgument, http.StatusText(httpStatus))
	}
	h.writeError(ctx, mux, m, w, r, &runtime.HTTPStatusError{HTTPStatus: httpStatus, Err: err})
}

// streamError is called when a streaming call fails. grpc-gateway then
// writes the error as the stream's last line, and, when nothing was written
// yet, first the HTTP status of its own code table: the statusWriter swaps
// in the gateway's status, with its headers.
func (h *Handler) streamError(ctx context.Context, err error) *status.Status {
	st := status.Convert(err)
	code := httpstatus.FromCode(st.Code())
	h.logUpstream(ctx, st, code)
	if sw, ok := ctx.Value(statusWriterKey{}).(*statusWriter); ok && !sw.wrote {
		sw.override = code
		httpstatus.SetErrorHeaders(sw.Header(), code)
	}
	return st
}

// statusOf returns the HTTP status for st, logging upstream failures.
func (h *Handler) statusOf(r *http.Request, st *status.Status) int {
	code := httpstatus.FromCode(st.Code())
	h.logUpstream(r.Context(), st, code)
	return code
}

// logUpstream logs a failure of the index that is not the client's doing.
func (h *Handler) logUpstream(ctx context.Context, st *status.Status, code int) {
	switch {
	case ctx.Err() != nil:
		// The client went away; the access log says so.
	case code == http.StatusServiceUnavailable:
		h.log.WarnContext(ctx, "admin api: index unavailable", "code", st.Code().String(), "err", st.Message())
	case code >= 500 && code != http.StatusNotImplemented:
		h.log.ErrorContext(ctx, "admin api: index error", "code", st.Code().String(), "err", st.Message())
	}
}

// statusWriterKey is the context key of a request's statusWriter.
type statusWriterKey struct{}

// statusWriter remembers whether the status was written, and writes the
// status streamError chose instead of grpc-gateway's.
type statusWriter struct {
	http.ResponseWriter
	wrote    bool
	override int
	// tooLarge is the body limit that cut the request body; 0: none did.
	tooLarge int64
	// bodyTimedOut says the body did not arrive within its deadline.
	bodyTimedOut bool
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.wrote && w.override != 0 {
		code = w.override
	}
	w.wrote = true
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	w.wrote = true
	return w.ResponseWriter.Write(p)
}

// Unwrap lets http.ResponseController (grpc-gateway flushes each streamed
// message with it) reach the connection.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// The marshaler streams with a delimiter and its own content type.
var (
	_ runtime.Delimited         = marshaler
	_ runtime.StreamContentType = marshaler
)
