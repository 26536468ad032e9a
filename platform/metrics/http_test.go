package metrics

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func TestHTTPMiddleware(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	type response struct {
		route string
		code  int
	}
	var seen []response
	m := NewHTTP(reg, HTTPOptions{
		Route: func(r *http.Request) string {
			if strings.HasPrefix(r.URL.Path, "/nar/") {
				return "nar"
			}
			return "other"
		},
		OnResponse: func(r *http.Request, route string, code int) { seen = append(seen, response{route, code}) },
	})
	h := m.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/nar/upload":
			io.Copy(io.Discard, r.Body)
			w.WriteHeader(http.StatusNoContent)
		case "/nar/x":
			io.WriteString(w, "0123456789") // implicit 200
		case "/nar/flush":
			w.WriteHeader(http.StatusOK)
			io.WriteString(w, "abc")
			if err := http.NewResponseController(w).Flush(); err != nil {
				t.Errorf("flush through the middleware: %v", err)
			}
		case "/empty":
			// writes nothing: 200
		default:
			http.NotFound(w, r)
		}
	}))

	tests := []struct {
		method, path, body string
		code               int
		route              string
	}{
		{"GET", "/nar/x", "", 200, "nar"},
		{"HEAD", "/nar/x", "", 200, "nar"},
		{"PUT", "/nar/upload", "twelve bytes", 204, "nar"},
		{"GET", "/nar/flush", "", 200, "nar"},
		{"GET", "/missing", "", 404, "other"},
		{"GET", "/empty", "", 200, "other"},
		{"BREW", "/missing", "", 404, "other"},
	}
	for _, tt := range tests {
		var body io.Reader
		if tt.body != "" {
			body = strings.NewReader(tt.body)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(tt.method, tt.path, body))
		if rec.Code != tt.code {
			t.Errorf("%s %s: status %d, want %d", tt.method, tt.path, rec.Code, tt.code)
		}
	}

	counts := []struct {
		route, method, code string
		want                float64
	}{
		{"nar", "GET", "200", 2},
		{"nar", "HEAD", "200", 1},
		{"nar", "PUT", "204", 1},
		{"other", "GET", "404", 1},
		{"other", "GET", "200", 1},
		{"other", "other", "404", 1}, // BREW is not a label value
	}
	for _, c := range counts {
		if got := testutil.ToFloat64(m.requests.WithLabelValues(c.route, c.method, c.code)); got != c.want {
			t.Errorf("requests{%s,%s,%s} = %v, want %v", c.route, c.method, c.code, got, c.want)
		}
	}
	// httptest.ResponseRecorder keeps HEAD bodies, so HEAD counts 10 too.
	if got := testutil.ToFloat64(m.sent.WithLabelValues("nar")); got != 10+10+3 {
		t.Errorf("bytes sent on nar = %v, want 23", got)
	}
	if got := testutil.ToFloat64(m.received.WithLabelValues("nar")); got != 12 {
		t.Errorf("bytes received on nar = %v, want 12", got)
	}
	if got := testutil.ToFloat64(m.inFlight.WithLabelValues("nar")); got != 0 {
		t.Errorf("in flight after the requests = %v", got)
	}
	if n := histogramCount(t, m.duration, "nar", "GET"); n != 2 {
		t.Errorf("latency histogram of nar GET counted %d, want 2", n)
	}
	if len(seen) != len(tests) || seen[2] != (response{"nar", 204}) || seen[4] != (response{"other", 404}) {
		t.Errorf("OnResponse saw %v", seen)
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
}

func TestHTTPClientGone(t *testing.T) {
	m := NewHTTP(prometheus.NewPedanticRegistry(), HTTPOptions{})
	h := m.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/", nil).WithContext(ctx))
	if got := testutil.ToFloat64(m.requests.WithLabelValues("other", "GET", "499")); got != 1 {
		t.Errorf("a request whose client left before an answer: requests{code=499} = %v, want 1", got)
	}
}

func TestCache(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	c := NewCache(reg)
	c.NarinfoHit()
	c.NarinfoHit()
	c.NarinfoMiss()
	c.NarDownload()
	c.NarBytesServed(1000)
	c.NarBytesServed(-1)
	var nilCache *Cache
	nilCache.NarinfoHit() // no panic
	want := `
# HELP nixcache_narinfo_requests_total narinfo lookups, by result: "hit" (the path is cached) or "miss".
# TYPE nixcache_narinfo_requests_total counter
nixcache_narinfo_requests_total{result="hit"} 2
nixcache_narinfo_requests_total{result="miss"} 1
# HELP nixcache_nar_bytes_served_total NAR file bytes served.
# TYPE nixcache_nar_bytes_served_total counter
nixcache_nar_bytes_served_total 1000
# HELP nixcache_nar_downloads_total NAR downloads started.
# TYPE nixcache_nar_downloads_total counter
nixcache_nar_downloads_total 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
}

func TestCatalog(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	var fail error
	if err := RegisterCatalog(reg, func() (CatalogStats, error) {
		return CatalogStats{PushedPaths: 3, LocalPaths: 4, PinnedPaths: 1, NarBytes: 700, StoredBytes: 300}, fail
	}); err != nil {
		t.Fatal(err)
	}
	want := `
# HELP nixcache_catalog_paths Catalogued store paths, by source: "pushed" (nix copy --to) or "local" (the host's store).
# TYPE nixcache_catalog_paths gauge
nixcache_catalog_paths{source="local"} 4
nixcache_catalog_paths{source="pushed"} 3
# HELP nixcache_catalog_stored_bytes Bytes of NAR files on disk.
# TYPE nixcache_catalog_stored_bytes gauge
nixcache_catalog_stored_bytes 300
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "nixcache_catalog_paths", "nixcache_catalog_stored_bytes"); err != nil {
		t.Error(err)
	}
	// A failing catalogue fails its gauges, not the scrape of the rest.
	fail = errors.New("catalog closed")
	reg.MustRegister(prometheus.NewCounter(prometheus.CounterOpts{Name: "other_total", Help: "x"}))
	rec := httptest.NewRecorder()
	Handler(reg).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 || !strings.Contains(rec.Body.String(), "other_total 0") || strings.Contains(rec.Body.String(), "nixcache_catalog_paths{") {
		t.Errorf("scrape with a failing catalogue: %d\n%s", rec.Code, rec.Body)
	}
}

func TestSigner(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	s := NewSigner(reg, func() (int, int) { return 2, 1 })
	s.Signed("cache-1", 5)
	s.Signed("cache-2", 5)
	s.Signed("cache-1", 1)
	want := `
# HELP nixcache_signer_active_keys Keys the signer signs with.
# TYPE nixcache_signer_active_keys gauge
nixcache_signer_active_keys 2
# HELP nixcache_signer_retired_keys Retired keys the signer still lists.
# TYPE nixcache_signer_retired_keys gauge
nixcache_signer_retired_keys 1
# HELP nixcache_signer_signatures_total Signatures made, by key name.
# TYPE nixcache_signer_signatures_total counter
nixcache_signer_signatures_total{key="cache-1"} 6
nixcache_signer_signatures_total{key="cache-2"} 5
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
}

// TestOpsServer serves /metrics and /healthz on 127.0.0.1:0 and checks
// /healthz follows the gRPC health server.
func TestOpsServer(t *testing.T) {
	reg := NewRegistry()
	NewCache(reg).NarinfoHit()
	hs := health.NewServer()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := Start(lis, OpsHandler(reg, GRPCHealthz(hs)), discard())
	base := "http://" + lis.Addr().String()
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	tests := []struct {
		name   string
		status healthpb.HealthCheckResponse_ServingStatus
		path   string
		code   int
		want   string
	}{
		{"metrics", healthpb.HealthCheckResponse_SERVING, "/metrics", 200, `nixcache_narinfo_requests_total{result="hit"} 1`},
		{"runtime metrics", healthpb.HealthCheckResponse_SERVING, "/metrics", 200, "go_goroutines"},
		{"healthy", healthpb.HealthCheckResponse_SERVING, "/healthz", 200, "ok"},
		{"not serving", healthpb.HealthCheckResponse_NOT_SERVING, "/healthz", 503, "NOT_SERVING"},
		{"other path", healthpb.HealthCheckResponse_SERVING, "/", 404, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hs.SetServingStatus("", tt.status)
			code, body := get(tt.path)
			if code != tt.code || !strings.Contains(body, tt.want) {
				t.Errorf("GET %s: %d %q, want %d with %q", tt.path, code, body, tt.code, tt.want)
			}
		})
	}
	if err := srv.Shutdown(5 * time.Second); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if _, err := http.Get(base + "/healthz"); err == nil {
		t.Error("the server still answers after Shutdown")
	}
}

// readFromWriter is a ResponseWriter whose ReadFrom (net/http's: sendfile
// for a file) must be reached through the middleware.
type readFromWriter struct {
	httptest.ResponseRecorder
	readFrom int64
}

func (w *readFromWriter) ReadFrom(src io.Reader) (int64, error) {
	n, err := io.Copy(&w.ResponseRecorder, src)
	w.readFrom += n
	return n, err
}

func TestHTTPMiddlewareReadFrom(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m := NewHTTP(reg, HTTPOptions{})
	h := m.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		// io.CopyN, as a file is served: a LimitedReader, no WriterTo.
		io.CopyN(w, strings.NewReader(strings.Repeat("x", 5000)), 4000)
	}))
	w := &readFromWriter{ResponseRecorder: *httptest.NewRecorder()}
	h.ServeHTTP(w, httptest.NewRequest("GET", "/nar/f", nil))
	if w.readFrom != 4000 || w.Body.Len() != 4000 {
		t.Errorf("ReadFrom below got %d bytes, body %d: want 4000 through ReadFrom", w.readFrom, w.Body.Len())
	}
	if got := testutil.ToFloat64(m.sent.WithLabelValues("other")); got != 4000 {
		t.Errorf("response bytes counted %v, want 4000", got)
	}
}
