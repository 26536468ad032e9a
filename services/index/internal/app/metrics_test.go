package app_test

import (
	"context"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/fakesigner"
)

// TestRunMetrics checks /metrics counts the index's calls and /healthz
// answers while it serves, and that both go away when Run returns.
func TestRunMetrics(t *testing.T) {
	fake := fakesigner.New(t, "/nix/store")
	signerLis := listen(t)
	fake.Serve(t, signerLis)
	o := options(filepath.Join(t.TempDir(), "index"), signerLis.Addr().String())
	mlis := listen(t)
	o.MetricsListener = mlis
	client, stop := start(t, o)

	for range 2 {
		_, err := client.GetPathInfo(context.Background(), &indexv1.GetPathInfoRequest{HashPart: strings.Repeat("1", 32)})
		if status.Code(err) != codes.NotFound {
			t.Fatalf("GetPathInfo of an unknown path: %v", err)
		}
	}
	base := "http://" + mlis.Addr().String()
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
	code, body := get("/metrics")
	want := `grpc_server_handled_total{grpc_code="NotFound",grpc_method="GetPathInfo",grpc_service="nixcache.index.v1.IndexService",grpc_type="unary"} 2`
	if code != 200 || !strings.Contains(body, want) {
		t.Errorf("/metrics: %d, lacks %q", code, want)
	}
	if code, body := get("/healthz"); code != 200 || !strings.Contains(body, "ok") {
		t.Errorf("/healthz: %d %q", code, body)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := http.Get(base + "/healthz"); err == nil {
		t.Error("/healthz still answers after Run returned")
	}
}
