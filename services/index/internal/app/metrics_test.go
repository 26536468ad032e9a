package app_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/app"
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

// TestRunStartupCheck: the index checks its data directory before it
// serves: an orphan NAR file is moved aside, an unfinished upload removed,
// and /metrics and the log say so; app.Check (nixcache-index check) runs
// the same check on a stopped index and finds it clean then.
func TestRunStartupCheck(t *testing.T) {
	fake := fakesigner.New(t, "/nix/store")
	signerLis := listen(t)
	fake.Serve(t, signerLis)
	dir := filepath.Join(t.TempDir(), "index")
	orphan := filepath.Join(dir, "nars", "ab", "ab"+strings.Repeat("0", 50)+".nar.xz")
	leftover := filepath.Join(dir, "tmp", "upload-1")
	for _, p := range []string{orphan, leftover} {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("left by a killed run"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var logBuf bytes.Buffer
	o := options(dir, signerLis.Addr().String())
	o.Log = slog.New(slog.NewTextHandler(&syncWriter{w: &logBuf}, nil))
	mlis := listen(t)
	o.MetricsListener = mlis
	client, stop := start(t, o)
	// Serving means the check is done.
	if _, err := client.CheckPaths(context.Background(), &indexv1.CheckPathsRequest{}); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + mlis.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`nixcache_index_startup_check_mismatches{kind="orphan"} 1`,
		`nixcache_index_startup_check_mismatches{kind="quarantined_path"} 0`,
		`nixcache_index_startup_leftover_uploads 1`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	log := logBuf.String()
	if !strings.Contains(log, `msg="startup check" mismatches=1`) || !strings.Contains(log, "leftover_uploads=1") {
		t.Errorf("log lacks the startup check's report:\n%s", log)
	}
	for _, p := range []string{orphan, leftover} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still there: %v", p, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "orphans", filepath.Base(orphan))); err != nil {
		t.Errorf("the orphan was not moved to orphans/: %v", err)
	}

	r, err := app.Check(context.Background(), dir, 1<<20, o.Log)
	if err != nil || r.Mismatches() != 0 {
		t.Errorf("app.Check after the repair: %+v, %v; want no mismatch", r, err)
	}
}

// syncWriter serialises writes to w (the log is written from several
// goroutines).
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}
