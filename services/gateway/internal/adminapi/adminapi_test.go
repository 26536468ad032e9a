package adminapi

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/nixcache/nixcache/platform/auth"
	"github.com/nixcache/nixcache/platform/grpcutil"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/gateway/internal/httpapi"
)

const storePath = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-hello-2.12"

// fakeAdmin is an AdminService that records what it was asked.
type fakeAdmin struct {
	indexv1.UnimplementedAdminServiceServer

	mu   sync.Mutex
	md   metadata.MD   // incoming metadata of the last call
	req  proto.Message // the last request
	err  error         // when set, every call fails with it
	hang bool          // unary calls wait until canceled

	// gc are the messages CollectGarbage streams; before each but the
	// first it waits for a value on gcNext. gcErr ends the stream after
	// them.
	gc     []*indexv1.CollectGarbageResponse
	gcNext chan struct{}
	gcErr  error
}

func (f *fakeAdmin) record(ctx context.Context, req proto.Message) error {
	md, _ := metadata.FromIncomingContext(ctx)
	f.mu.Lock()
	f.md, f.req = md, req
	err, hang := f.err, f.hang
	f.mu.Unlock()
	if hang {
		<-ctx.Done()
		return status.FromContextError(ctx.Err()).Err()
	}
	return err
}

func (f *fakeAdmin) last() (metadata.MD, proto.Message) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.md, f.req
}

func (f *fakeAdmin) GetStats(ctx context.Context, req *indexv1.GetStatsRequest) (*indexv1.GetStatsResponse, error) {
	if err := f.record(ctx, req); err != nil {
		return nil, err
	}
	return &indexv1.GetStatsResponse{Paths: 3, PushedPaths: 3, NarBytes: 1 << 40, StoredBytes: 12345}, nil
}

func (f *fakeAdmin) ListPaths(ctx context.Context, req *indexv1.ListPathsRequest) (*indexv1.ListPathsResponse, error) {
	if err := f.record(ctx, req); err != nil {
		return nil, err
	}
	return &indexv1.ListPathsResponse{
		Paths:         []*indexv1.PathSummary{{StorePath: storePath, NarSize: 42, Source: indexv1.Source_SOURCE_PUSHED}},
		NextPageToken: "next",
	}, nil
}

func (f *fakeAdmin) GetPath(ctx context.Context, req *indexv1.GetPathRequest) (*indexv1.GetPathResponse, error) {
	if err := f.record(ctx, req); err != nil {
		return nil, err
	}
	return &indexv1.GetPathResponse{Summary: &indexv1.PathSummary{StorePath: storePath}, Downloads: 7}, nil
}

func (f *fakeAdmin) FindMissingPaths(ctx context.Context, req *indexv1.FindMissingPathsRequest) (*indexv1.FindMissingPathsResponse, error) {
	if err := f.record(ctx, req); err != nil {
		return nil, err
	}
	return &indexv1.FindMissingPathsResponse{Missing: req.GetPaths()[:1]}, nil
}

func (f *fakeAdmin) DeletePath(ctx context.Context, req *indexv1.DeletePathRequest) (*indexv1.DeletePathResponse, error) {
	if err := f.record(ctx, req); err != nil {
		return nil, err
	}
	return &indexv1.DeletePathResponse{Deleted: []string{storePath}, FreedBytes: 42}, nil
}

func (f *fakeAdmin) CollectGarbage(req *indexv1.CollectGarbageRequest, stream grpc.ServerStreamingServer[indexv1.CollectGarbageResponse]) error {
	if err := f.record(stream.Context(), req); err != nil {
		return err
	}
	for i, m := range f.gc {
		if i > 0 {
			select {
			case <-f.gcNext:
			case <-stream.Context().Done():
				return stream.Context().Err()
			}
		}
		if err := stream.Send(m); err != nil {
			return err
		}
	}
	return f.gcErr
}

// env is the gateway's HTTP handler with the admin API mounted, in front
// of a fake AdminService over bufconn.
type env struct {
	admin *fakeAdmin
	url   string
}

func newEnv(t *testing.T, requestTimeout time.Duration) *env {
	t.Helper()
	return newEnvWith(t, Config{RequestTimeout: requestTimeout})
}

// newEnvWith is newEnv with cfg's Auth, MaxBodySize and RequestTimeout.
func newEnvWith(t *testing.T, cfg Config) *env {
	t.Helper()
	requestTimeout := cfg.RequestTimeout
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	e := &env{admin: &fakeAdmin{gcNext: make(chan struct{})}}
	lis := bufconn.Listen(1 << 20)
	gs := grpcutil.NewServer(log)
	indexv1.RegisterAdminServiceServer(gs.GRPC, e.admin)
	go gs.GRPC.Serve(lis)
	t.Cleanup(gs.GRPC.Stop)
	conn, err := grpcutil.Dial("passthrough:///bufnet", grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
		return lis.DialContext(ctx)
	}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })

	cfg.Index, cfg.Log = conn, log
	admin, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// The real chain: the gateway's handler (request ids, access log,
	// its response recorder) in front of the admin API.
	h, err := httpapi.New(httpapi.Config{
		Index:          indexv1.NewIndexServiceClient(conn),
		Log:            log,
		StoreDir:       "/nix/store",
		MaxNarinfoSize: 1 << 10,
		RequestTimeout: requestTimeout,
		Admin:          admin,
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	e.url = srv.URL
	return e
}

type response struct {
	code   int
	header http.Header
	body   string
}

func (e *env) do(t *testing.T, method, path, body string, header ...string) response {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, e.url+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if method != http.MethodGet && method != http.MethodHead {
		// A change needs credentials before the index is asked; the
		// fake index judges none.
		req.Header.Set("Authorization", "Bearer any")
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return response{resp.StatusCode, resp.Header, string(b)}
}

// object decodes a JSON object.
func object(t *testing.T, s string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		t.Fatalf("not a JSON object: %v\n%s", err, s)
	}
	return m
}

func TestRoutes(t *testing.T) {
	e := newEnv(t, 5*time.Second)
	tests := []struct {
		name, method, path, body string
		wantReq                  proto.Message // what the index must receive
		wantJSON                 map[string]any
	}{
		{
			name: "stats", method: "GET", path: "/api/v1/stats",
			wantReq: &indexv1.GetStatsRequest{},
			// snake_case, 64-bit integers as strings, zeros present.
			wantJSON: map[string]any{"paths": "3", "pushed_paths": "3", "nar_bytes": "1099511627776", "stored_bytes": "12345", "narinfo_misses": "0"},
		},
		{
			name: "list paths", method: "GET", path: "/api/v1/paths?query=hello&page_size=2&page_token=abc",
			wantReq:  &indexv1.ListPathsRequest{Query: "hello", PageSize: 2, PageToken: "abc"},
			wantJSON: map[string]any{"next_page_token": "next"},
		},
		{
			name: "get path by base name", method: "GET", path: "/api/v1/paths/0123456789abcdfghijklmnpqrsvwxyz-hello-2.12",
			wantReq:  &indexv1.GetPathRequest{Path: "0123456789abcdfghijklmnpqrsvwxyz-hello-2.12"},
			wantJSON: map[string]any{"downloads": "7", "referrers": []any{}},
		},
		{
			name: "get path by escaped store path", method: "GET", path: "/api/v1/paths/%2Fnix%2Fstore%2F0123456789abcdfghijklmnpqrsvwxyz-hello-2.12",
			wantReq: &indexv1.GetPathRequest{Path: "0123456789abcdfghijklmnpqrsvwxyz-hello-2.12"},
		},
		{
			name: "get path by store path", method: "GET", path: "/api/v1/paths/" + storePath,
			wantReq: &indexv1.GetPathRequest{Path: "0123456789abcdfghijklmnpqrsvwxyz-hello-2.12"},
		},
		{
			name: "get path with escaped name", method: "GET", path: "/api/v1/paths/0123456789abcdfghijklmnpqrsvwxyz-gtk%2B3",
			wantReq: &indexv1.GetPathRequest{Path: "0123456789abcdfghijklmnpqrsvwxyz-gtk+3"},
		},
		{
			name: "delete path", method: "DELETE", path: "/api/v1/paths/0123456789abcdfghijklmnpqrsvwxyz?with_referrers=true&dry_run=true",
			wantReq:  &indexv1.DeletePathRequest{Path: "0123456789abcdfghijklmnpqrsvwxyz", WithReferrers: true, DryRun: true},
			wantJSON: map[string]any{"deleted": []any{storePath}, "freed_bytes": "42"},
		},
		{
			name: "missing paths", method: "POST", path: "/api/v1/missing-paths", body: `{"paths": ["` + storePath + `", "0123456789abcdfghijklmnpqrsvwxy0"]}`,
			wantReq:  &indexv1.FindMissingPathsRequest{Paths: []string{storePath, "0123456789abcdfghijklmnpqrsvwxy0"}},
			wantJSON: map[string]any{"missing": []any{storePath}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := e.do(t, tt.method, tt.path, tt.body)
			if resp.code != http.StatusOK {
				t.Fatalf("status %d, body %s", resp.code, resp.body)
			}
			if ct := resp.header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q", ct)
			}
			_, got := e.admin.last()
			if !proto.Equal(got, tt.wantReq) {
				t.Errorf("index received %v, want %v", got, tt.wantReq)
			}
			m := object(t, resp.body)
			for k, want := range tt.wantJSON {
				if g, _ := json.Marshal(m[k]); string(g) != mustJSON(t, want) {
					t.Errorf("%s = %s, want %s (body %s)", k, g, mustJSON(t, want), resp.body)
				}
			}
		})
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestCredentialsForwarded checks that the caller's Authorization header
// reaches the index as "authorization" metadata, alone, with the request id.
func TestCredentialsForwarded(t *testing.T) {
	e := newEnv(t, 5*time.Second)
	tests := []struct {
		name   string
		header []string
		want   []string // authorization metadata
	}{
		{"bearer", []string{"Authorization", "Bearer s3cret"}, []string{"Bearer s3cret"}},
		{"basic", []string{"Authorization", "Basic bml4Y2FjaGU6czNjcmV0"}, []string{"Basic bml4Y2FjaGU6czNjcmV0"}},
		{"anonymous", nil, nil},
		{"no smuggling through Grpc-Metadata-", []string{"Grpc-Metadata-Authorization", "Bearer forged"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			header := append([]string{"X-Request-Id", "req-" + strings.ReplaceAll(tt.name, " ", "-")}, tt.header...)
			if resp := e.do(t, "GET", "/api/v1/stats", "", header...); resp.code != http.StatusOK {
				t.Fatalf("status %d, body %s", resp.code, resp.body)
			}
			md, _ := e.admin.last()
			if got := md.Get("authorization"); strings.Join(got, "|") != strings.Join(tt.want, "|") {
				t.Errorf("authorization metadata %q, want %q", got, tt.want)
			}
			for k := range md {
				if strings.HasPrefix(k, "grpcgateway-") {
					t.Errorf("header forwarded as metadata %q: %q", k, md.Get(k))
				}
			}
			if got := md.Get("x-request-id"); len(got) != 1 || got[0] != header[1] {
				t.Errorf("x-request-id metadata %q, want %q", got, header[1])
			}
		})
	}
}

func TestErrors(t *testing.T) {
	tests := []struct {
		name       string
		err        error
		hang       bool
		method     string
		path, body string
		code       int
		header     string // a header the answer must carry
	}{
		{"no token", status.Error(codes.Unauthenticated, "admin requires a token"), false, "GET", "/api/v1/stats", "", 401, "WWW-Authenticate"},
		{"wrong scope", status.Error(codes.PermissionDenied, `token "ci" lacks the admin scope`), false, "DELETE", "/api/v1/paths/x", "", 403, ""},
		{"no such path", status.Error(codes.NotFound, "not cached"), false, "GET", "/api/v1/paths/x", "", 404, ""},
		{"referred to", status.Error(codes.FailedPrecondition, "referred to by 2 paths"), false, "DELETE", "/api/v1/paths/x", "", 400, ""},
		{"index down", status.Error(codes.Unavailable, "connection refused"), false, "GET", "/api/v1/stats", "", 503, "Retry-After"},
		{"index too slow", nil, true, "GET", "/api/v1/stats", "", 503, "Retry-After"},
		{"not implemented", status.Error(codes.Unimplemented, "unknown method"), false, "GET", "/api/v1/stats", "", 501, ""},
		{"index bug", status.Error(codes.Internal, "boom"), false, "GET", "/api/v1/stats", "", 500, ""},
		// Streaming calls fail on their first message; the status is still the gateway's.
		{"stream bad token", status.Error(codes.Unauthenticated, "invalid token"), false, "POST", "/api/v1/gc", "{}", 401, "WWW-Authenticate"},
		{"stream wrong scope", status.Error(codes.PermissionDenied, "lacks the admin scope"), false, "POST", "/api/v1/gc", "{}", 403, ""},
		{"stream index down", status.Error(codes.Unavailable, "connection refused"), false, "POST", "/api/v1/gc", "{}", 503, "Retry-After"},
		{"stream too large", status.Error(codes.ResourceExhausted, "too large"), false, "POST", "/api/v1/gc", "{}", 413, ""},
		// The gateway's own refusals.
		{"unknown field", nil, false, "POST", "/api/v1/gc", `{"dry_rnu": true}`, 400, ""},
		{"bad page size", nil, false, "GET", "/api/v1/paths?page_size=many", "", 400, ""},
		{"unknown route", nil, false, "GET", "/api/v1/nope", "", 404, ""},
		{"wrong method", nil, false, "PUT", "/api/v1/stats", "", 405, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, 200*time.Millisecond)
			e.admin.err, e.admin.hang = tt.err, tt.hang
			resp := e.do(t, tt.method, tt.path, tt.body)
			if resp.code != tt.code {
				t.Fatalf("status %d, want %d (body %s)", resp.code, tt.code, resp.body)
			}
			if tt.header != "" && resp.header.Get(tt.header) == "" {
				t.Errorf("no %s header; headers %v", tt.header, resp.header)
			}
			if ct := resp.header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q", ct)
			}
			m := object(t, strings.TrimSpace(resp.body))
			if tt.method == "POST" && tt.err != nil {
				// A stream answers NDJSON, even when its first line is the error.
				m, _ = m["error"].(map[string]any)
			}
			if tt.err != nil {
				st := status.Convert(tt.err)
				if m["code"] != float64(st.Code()) || m["message"] != st.Message() {
					t.Errorf("body %s, want code %d and message %q", resp.body, st.Code(), st.Message())
				}
			} else if msg, _ := m["message"].(string); msg == "" {
				t.Errorf("body %s has no message", resp.body)
			}
		})
	}
}

// TestStreamFlushed checks that each progress message of a streaming call
// reaches the client as its own JSON line before the next one is produced.
func TestStreamFlushed(t *testing.T) {
	e := newEnv(t, 5*time.Second)
	e.admin.gc = []*indexv1.CollectGarbageResponse{
		{StorePath: storePath, Reason: "size", FreedBytes: 10, Deleted: 1, TotalFreedBytes: 10},
		{StorePath: storePath + "-b", Reason: "age", FreedBytes: 5, Deleted: 2, TotalFreedBytes: 15},
		{Deleted: 2, TotalFreedBytes: 15, KeptBytes: 100, Done: true},
	}
	e.admin.gcErr = status.Error(codes.Aborted, "catalogue changed")

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "POST", e.url+"/api/v1/gc",
		strings.NewReader(`{"dry_run": true, "max_total_size": "1000", "max_age": "3600s"}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer admin-token")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("status %d, body %s", resp.StatusCode, b)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/x-ndjson" {
		t.Errorf("Content-Type %q, want application/x-ndjson", ct)
	}
	_, got := e.admin.last()
	want := &indexv1.CollectGarbageRequest{DryRun: true, MaxTotalSize: 1000, MaxAge: durationpb.New(time.Hour)}
	if !proto.Equal(got, want) {
		t.Errorf("index received %v, want %v", got, want)
	}

	lines := bufio.NewScanner(resp.Body)
	for i, m := range e.admin.gc {
		// The fake sends message i only after line i-1 was read here: a
		// response buffered until the end would time out.
		if i > 0 {
			select {
			case e.admin.gcNext <- struct{}{}:
			case <-ctx.Done():
				t.Fatalf("line %d: the index never asked for the next message", i)
			}
		}
		if !lines.Scan() {
			t.Fatalf("line %d: stream ended: %v", i, lines.Err())
		}
		line := object(t, lines.Text())
		result, ok := line["result"].(map[string]any)
		if !ok {
			t.Fatalf("line %d: %s, want a result", i, lines.Text())
		}
		if result["store_path"] != m.GetStorePath() || result["deleted"] != mustString(m.GetDeleted()) || result["done"] != m.GetDone() {
			t.Errorf("line %d: %s, want %v", i, lines.Text(), m)
		}
	}
	// The error after the last message is the stream's last line.
	if !lines.Scan() {
		t.Fatalf("no error line: %v", lines.Err())
	}
	errLine, ok := object(t, lines.Text())["error"].(map[string]any)
	if !ok || errLine["code"] != float64(codes.Aborted) || errLine["message"] != "catalogue changed" {
		t.Errorf("last line %s, want the Aborted error", lines.Text())
	}
	if lines.Scan() {
		t.Errorf("extra line %s", lines.Text())
	}
}

// TestCrossOrigin checks that a browser on another site cannot make
// changes with credentials the browser holds, and can still read.
func TestCrossOrigin(t *testing.T) {
	tests := []struct {
		name, method, path string
		header             []string
		code               int
	}{
		{"cross-site gc", "POST", "/api/v1/gc", []string{"Sec-Fetch-Site", "cross-site", "Content-Type", "text/plain"}, 403},
		{"foreign origin gc", "POST", "/api/v1/gc", []string{"Origin", "http://evil.example"}, 403},
		{"cross-site delete", "DELETE", "/api/v1/paths/x", []string{"Sec-Fetch-Site", "cross-site"}, 403},
		{"cross-site read", "GET", "/api/v1/stats", []string{"Sec-Fetch-Site", "cross-site"}, 200},
		{"same-origin gc", "POST", "/api/v1/gc", []string{"Sec-Fetch-Site", "same-origin"}, 200},
		{"curl gc", "POST", "/api/v1/gc", nil, 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, 5*time.Second)
			header := append([]string{"Authorization", "Basic bml4Y2FjaGU6czNjcmV0"}, tt.header...)
			resp := e.do(t, tt.method, tt.path, "{}", header...)
			if resp.code != tt.code {
				t.Fatalf("status %d, want %d (body %s)", resp.code, tt.code, resp.body)
			}
			_, req := e.admin.last()
			if called := req != nil; called != (tt.code == 200) {
				t.Errorf("index called: %v, want %v", called, tt.code == 200)
			}
			if tt.code == 403 {
				if m := object(t, resp.body); m["code"] != float64(codes.PermissionDenied) {
					t.Errorf("body %s", resp.body)
				}
			}
		})
	}
}

func mustString(n uint64) string {
	b, _ := json.Marshal(n)
	return string(b)
}

func TestNewValidates(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	conn, err := grpcutil.Dial("passthrough:///unused")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, c := range []Config{
		{RequestTimeout: time.Second, Log: log},
		{Index: conn, Log: log},
		{Index: conn, RequestTimeout: time.Second},
	} {
		if _, err := New(c); err == nil {
			t.Errorf("New(%+v) succeeded", c)
		}
	}
}

func TestBodyBounded(t *testing.T) {
	e := newEnv(t, 5*time.Second)
	big := `{"paths": ["` + strings.Repeat("a", MaxBodySize) + `"]}`
	resp := e.do(t, "POST", "/api/v1/missing-paths", big)
	if resp.code != http.StatusRequestEntityTooLarge {
		t.Errorf("%d-byte body: status %d, want 413; body %s", len(big), resp.code, resp.body)
	}
	if _, got := e.admin.last(); got != nil {
		t.Errorf("the index was asked %v", got)
	}

	// 8,000 store paths, past the other routes' 64 KiB: a push client's
	// query for a large closure, which must reach the index.
	paths := make([]string, 8000)
	for i := range paths {
		paths[i] = fmt.Sprintf("/nix/store/%032d-pkg-%d", i, i)
	}
	large := `{"paths": ["` + strings.Join(paths, `", "`) + `"]}`
	e.do(t, "POST", "/api/v1/missing-paths", large)
	if _, got := e.admin.last(); got == nil {
		t.Errorf("a %d-byte missing-paths query did not reach the index", len(large))
	}
}

// TestChangeCheckedBeforeBody: a change without credentials, or (when the
// gateway has tokens) without a token of the admin scope, is refused
// before its body is read and before the index is asked; a body past the
// limit is 413, with the admin token.
func TestChangeCheckedBeforeBody(t *testing.T) {
	tokens, err := auth.ParseTokens(strings.NewReader("op admin s3cret-admin\nci push,read s3cret-push\n"), "test")
	if err != nil {
		t.Fatal(err)
	}
	big := `{"dry_run": true, "max_size": "` + strings.Repeat("1", 1<<20) + `"}`
	tests := []struct {
		name   string
		policy auth.Policy
		header []string
		body   string
		code   int
		asked  bool // the index got the call
	}{
		{"anonymous, gateway without tokens", auth.Policy{}, []string{"Authorization", ""}, big, 401, false},
		{"anonymous, gateway with tokens", auth.Policy{Tokens: tokens}, []string{"Authorization", ""}, big, 401, false},
		{"bad token", auth.Policy{Tokens: tokens}, []string{"Authorization", "Bearer nope"}, big, 401, false},
		{"push token", auth.Policy{Tokens: tokens}, []string{"Authorization", "Bearer s3cret-push"}, big, 403, false},
		{"admin token, body too large", auth.Policy{Tokens: tokens}, []string{"Authorization", "Bearer s3cret-admin"}, big, 413, false},
		{"admin token", auth.Policy{Tokens: tokens}, []string{"Authorization", "Bearer s3cret-admin"}, `{"dry_run": true}`, 0, true},
		{"token that cannot be checked (index down)", auth.Policy{Tokens: downTokens{}}, []string{"Authorization", "Bearer s3cret-admin"}, `{"dry_run": true}`, 503, false},
		{"token for the index to judge", auth.Policy{}, []string{"Authorization", "Bearer any"}, `{"dry_run": true}`, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnvWith(t, Config{RequestTimeout: 5 * time.Second, Auth: tt.policy, MaxBodySize: 64 << 10})
			resp := e.do(t, "POST", "/api/v1/gc", tt.body, tt.header...)
			if _, req := e.admin.last(); (req != nil) != tt.asked {
				t.Errorf("index asked: %v, want %v", req != nil, tt.asked)
			}
			if tt.asked {
				return
			}
			if resp.code != tt.code {
				t.Fatalf("status %d, want %d (body %s)", resp.code, tt.code, resp.body)
			}
			if msg, _ := object(t, strings.TrimSpace(resp.body))["message"].(string); msg == "" {
				t.Errorf("body %s has no message", resp.body)
			}
		})
	}
}

// downTokens checks no token: the index they are asked of is down.
type downTokens struct{}

func (downTokens) Authenticate(context.Context, string) (auth.Identity, error) {
	return auth.Identity{}, auth.Unavailable("the index does not answer")
}

// TestSlowBody: a body that stops arriving is answered 408 after the
// body timeout, and the index is not asked.
func TestSlowBody(t *testing.T) {
	e := newEnvWith(t, Config{RequestTimeout: 5 * time.Second, BodyTimeout: 300 * time.Millisecond})
	conn, err := net.Dial("tcp", strings.TrimPrefix(e.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	start := time.Now()
	io.WriteString(conn, "POST /api/v1/gc HTTP/1.1\r\nHost: cache\r\nAuthorization: Bearer any\r\nContent-Length: 100\r\n\r\n{\"dry_run\":")
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no answer: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusRequestTimeout || !strings.Contains(string(body), "not received within") {
		t.Errorf("status %d %s, want 408 saying the body did not arrive", resp.StatusCode, body)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("answered after %v, want about the body timeout", took)
	}
	if _, req := e.admin.last(); req != nil {
		t.Errorf("the index was asked: %v", req)
	}
}
