package app

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
)

const (
	knownHash   = "1p9q0bz6f22dyxh4lw8xs08p4201vyq4"
	unknownHash = "0123456789abcdfghijklmnpqrsvwxyz"
	narHash     = "sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw"
)

// oneIndex knows one path.
type oneIndex struct {
	indexv1.UnimplementedIndexServiceServer
}

func (oneIndex) GetPathInfo(_ context.Context, req *indexv1.GetPathInfoRequest) (*indexv1.GetPathInfoResponse, error) {
	if req.GetHashPart() != knownHash {
		return nil, status.Error(codes.NotFound, "not cached")
	}
	return &indexv1.GetPathInfoResponse{Info: &indexv1.PathInfo{
		StorePath: "/nix/store/" + knownHash + "-f",
		NarHash:   narHash,
		NarSize:   120,
		Url:       "nar/04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw.nar",
		File:      &indexv1.NarFile{FileHash: narHash, FileSize: 120, Compression: "none", NarHash: narHash, NarSize: 120},
	}}, nil
}

// upstream serves an index on 127.0.0.1:0: grpc.health.v1 and
// IndexService.
func upstream(t testing.TB) (addr string, hs *health.Server) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	hs = health.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	indexv1.RegisterIndexServiceServer(srv, oneIndex{})
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return lis.Addr().String(), hs
}

func get(t *testing.T, url string, header ...string) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(body)
}

func TestHealthAndReadiness(t *testing.T) {
	indexAddr, indexHealth := upstream(t)
	o := options(t)
	o.IndexAddr = indexAddr
	url, _ := start(t, o)

	down := options(t) // the index unreachable
	downURL, _ := start(t, down)

	tests := []struct {
		name        string
		url         string
		indexStatus healthpb.HealthCheckResponse_ServingStatus
		code        int
		want        []string
		wantNot     []string
	}{
		{"healthz", url + "/healthz", healthpb.HealthCheckResponse_SERVING, 200, []string{"ok"}, nil},
		{"healthz with nothing up", downURL + "/healthz", healthpb.HealthCheckResponse_SERVING, 200, []string{"ok"}, nil},
		// The gateway never talks to the signer: it is no dependency.
		{"ready", url + "/readyz", healthpb.HealthCheckResponse_SERVING, 200, []string{"ready", "index: ok"}, []string{"signer"}},
		{"index not serving", url + "/readyz", healthpb.HealthCheckResponse_NOT_SERVING, 503, []string{"not ready", "index: down: NOT_SERVING"}, []string{"signer"}},
		{"nothing up", downURL + "/readyz", healthpb.HealthCheckResponse_SERVING, 503, []string{"index: down"}, []string{": ok", "signer"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			indexHealth.SetServingStatus("", tt.indexStatus)
			code, _, body := get(t, tt.url)
			if code != tt.code {
				t.Errorf("status %d, want %d; body %q", code, tt.code, body)
			}
			for _, w := range tt.want {
				if !strings.Contains(body, w) {
					t.Errorf("body %q lacks %q", body, w)
				}
			}
			for _, w := range tt.wantNot {
				if strings.Contains(body, w) {
					t.Errorf("body %q has %q", body, w)
				}
			}
		})
	}
	req, _ := http.NewRequest("POST", url+"/readyz", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /readyz: %d, want 405", resp.StatusCode)
	}
}

func TestMetrics(t *testing.T) {
	indexAddr, _ := upstream(t)
	o := options(t)
	o.IndexAddr = indexAddr
	url, _ := start(t, o)

	for _, r := range []struct {
		path string
		code int
	}{
		{"/" + knownHash + ".narinfo", 200},
		{"/" + knownHash + ".narinfo", 200},
		{"/" + unknownHash + ".narinfo", 404},
		{"/nix-cache-info", 200},
	} {
		if code, _, body := get(t, url+r.path); code != r.code {
			t.Fatalf("GET %s: %d %q, want %d", r.path, code, body, r.code)
		}
	}
	code, hdr, body := get(t, url+"/metrics")
	if code != 200 || !strings.HasPrefix(hdr.Get("Content-Type"), "text/plain") {
		t.Fatalf("/metrics: %d %s", code, hdr.Get("Content-Type"))
	}
	for _, want := range []string{
		`nixcache_narinfo_requests_total{result="hit"} 2`,
		`nixcache_narinfo_requests_total{result="miss"} 1`,
		`nixcache_http_requests_total{code="200",method="GET",route="narinfo"} 2`,
		`nixcache_http_requests_total{code="404",method="GET",route="narinfo"} 1`,
		`nixcache_http_requests_total{code="200",method="GET",route="nix-cache-info"} 1`,
		`nixcache_http_request_duration_seconds_count{method="GET",route="narinfo"} 3`,
		`nixcache_http_response_bytes_total{route="narinfo"}`,
		`grpc_client_handled_total{grpc_code="OK",grpc_method="GetPathInfo",grpc_service="nixcache.index.v1.IndexService",grpc_type="unary"} 2`,
		`grpc_client_handled_total{grpc_code="NotFound",grpc_method="GetPathInfo",grpc_service="nixcache.index.v1.IndexService",grpc_type="unary"} 1`,
		"go_goroutines",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// TestPrivateRead checks -public-read=false: reads need a token with the
// read scope, sent as Nix sends it from a netrc file.
func TestPrivateRead(t *testing.T) {
	authFile := filepath.Join(t.TempDir(), "auth")
	if err := os.WriteFile(authFile, []byte("laptop read readtok\nci push pushtok\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	indexAddr, _ := upstream(t)
	o := options(t)
	o.IndexAddr = indexAddr
	o.PrivateRead = true

	o.AuthFile = authFile
	url, _ := start(t, o)
	basic := func(user, pass string) string {
		r, _ := http.NewRequest("GET", "/", nil)
		r.SetBasicAuth(user, pass)
		return r.Header.Get("Authorization")
	}
	tests := []struct {
		name  string
		path  string
		authz string
		code  int
	}{
		{"anonymous cache info", "/nix-cache-info", "", 401},
		{"anonymous narinfo", "/" + knownHash + ".narinfo", "", 401},
		{"anonymous nar", "/nar/04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw.nar", "", 401},
		{"wrong token", "/nix-cache-info", basic("nixcache", "nope"), 401},
		{"push-only token", "/nix-cache-info", basic("nixcache", "pushtok"), 403},
		{"read token, basic", "/nix-cache-info", basic("nixcache", "readtok"), 200},
		{"read token, narinfo", "/" + knownHash + ".narinfo", basic("nixcache", "readtok"), 200},
		{"read token, bearer", "/" + knownHash + ".narinfo", "Bearer readtok", 200},
		{"health needs no token", "/healthz", "", 200},
		{"metrics need no token", "/metrics", "", 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var hdr []string
			if tt.authz != "" {
				hdr = []string{"Authorization", tt.authz}
			}
			code, h, body := get(t, url+tt.path, hdr...)
			if code != tt.code {
				t.Errorf("GET %s: %d %q, want %d", tt.path, code, body, tt.code)
			}
			if code == 401 && !strings.HasPrefix(h.Get("WWW-Authenticate"), "Basic") {
				t.Errorf("401 without a Basic challenge: %q", h.Get("WWW-Authenticate"))
			}
			if strings.Contains(body, "readtok") || strings.Contains(body, "pushtok") {
				t.Errorf("body %q shows a token", body)
			}
		})
	}
}
