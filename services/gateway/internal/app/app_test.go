package app

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// closedAddr returns a loopback address nothing listens on.
func closedAddr(t testing.TB) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	return addr
}

func options(t testing.TB) Options {
	return Options{
		IndexAddr:           closedAddr(t),
		StoreDir:            "/nix/store",
		Priority:            30,
		MaxNarinfoSize:      64 << 10,
		RequestTimeout:      30 * time.Second,
		TransferIdleTimeout: time.Minute,
		ShutdownGrace:       5 * time.Second,
		Log:                 slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
}

// start runs the gateway; the returned function stops it and returns
// Run's error.
func start(t *testing.T, o Options) (url string, stop func() error) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, o, lis) }()
	stopped := false
	stop = func() error {
		if stopped {
			return nil
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(10 * time.Second):
			t.Fatal("Run did not return after its context ended")
			return nil
		}
	}
	t.Cleanup(func() { stop() })
	return "http://" + lis.Addr().String(), stop
}

// TestIndexDown checks that with the index unreachable a request fails
// fast with 503 and Retry-After, and that reads not needing it still work.
func TestIndexDown(t *testing.T) {
	url, stop := start(t, options(t))
	for _, path := range []string{
		"/0123456789abcdfghijklmnpqrsvwxyz.narinfo",
		"/nar/0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73.nar.xz",
	} {
		begin := time.Now()
		resp, err := http.Get(url + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
			t.Errorf("GET %s: status %d, Retry-After %q (body %q); want 503 with Retry-After",
				path, resp.StatusCode, resp.Header.Get("Retry-After"), body)
		}
		if d := time.Since(begin); d > 10*time.Second {
			t.Errorf("GET %s took %s; an unreachable index must fail fast", path, d)
		}
	}
	resp, err := http.Get(url + "/nix-cache-info")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("nix-cache-info: status %d", resp.StatusCode)
	}
	// The landing page still answers, saying the keys are unavailable.
	resp, err = http.Get(url + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "unavailable") {
		t.Errorf("landing page: status %d, body %q", resp.StatusCode, body)
	}
	if err := stop(); err != nil {
		t.Errorf("Run: %v", err)
	}
}

func TestRunAuthFile(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	bad := filepath.Join(dir, "bad")
	if err := os.WriteFile(good, []byte("ci push the-push-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bad, []byte("# ok\nci push the-push-token\nbroken-line\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	o := options(t)
	o.AuthFile = bad
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	err = Run(context.Background(), o, lis)
	if err == nil || !strings.Contains(err.Error(), "line 3") {
		t.Fatalf("Run with a bad auth file: %v, want an error naming line 3", err)
	}

	o.AuthFile = good
	url, _ := start(t, o)
	req, _ := http.NewRequest("PUT", url+"/nix-cache-info", strings.NewReader("StoreDir: /nix/store\n"))
	req.SetBasicAuth("nix", "the-push-token")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Errorf("PUT with the token: status %d, want 204", resp.StatusCode)
	}
}

func TestRunRejectsBadOptions(t *testing.T) {
	tests := []struct {
		name   string
		change func(*Options)
		want   string
	}{
		{"relative store dir", func(o *Options) { o.StoreDir = "nix/store" }, "not absolute"},
		{"negative priority", func(o *Options) { o.Priority = -1 }, "priority"},
		{"zero narinfo size", func(o *Options) { o.MaxNarinfoSize = 0 }, "narinfo size"},
		{"zero timeout", func(o *Options) { o.RequestTimeout = 0 }, "request timeout"},
		{"no index", func(o *Options) { o.IndexAddr = "" }, "index address"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := options(t)
			tt.change(&o)
			lis, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer lis.Close()
			if err := Run(context.Background(), o, lis); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Run = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}
