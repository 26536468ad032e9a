package app

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"

	signerv1 "github.com/nixcache/nixcache/proto/nixcache/signer/v1"
)

// TestRunKeyDir starts the signer with a key directory only: the first
// start generates the key there; keys generated and retired over gRPC stay
// so across restarts.
func TestRunKeyDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	opts := options()
	opts.KeyDir = dir
	opts.GenerateKey = "cache-1"

	type keyState struct {
		name   string
		active bool
	}
	// run starts the signer, runs f against it, stops it, and returns the
	// keys it listed at the end and what it told the operator.
	run := func(f func(signerv1.SignerServiceClient)) ([]keyState, string) {
		t.Helper()
		var notices bytes.Buffer
		opts.Notices = &notices
		r := start(t, opts)
		client := signerv1.NewSignerServiceClient(r.conn)
		if _, err := client.ListKeys(t.Context(), &signerv1.ListKeysRequest{}, grpc.WaitForReady(true)); err != nil {
			t.Fatal(err)
		}
		f(client)
		resp, err := client.ListKeys(t.Context(), &signerv1.ListKeysRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if err := r.shutdown(t); err != nil {
			t.Fatal(err)
		}
		var keys []keyState
		for _, k := range resp.Keys {
			keys = append(keys, keyState{k.Name, k.Active})
		}
		return keys, notices.String()
	}

	keys, notice := run(func(signerv1.SignerServiceClient) {})
	if len(keys) != 1 || keys[0] != (keyState{"cache-1", true}) {
		t.Fatalf("first start: keys %v, want cache-1 generated", keys)
	}
	if !strings.Contains(notice, filepath.Join(dir, "cache-1.key")) {
		t.Errorf("notice %q does not name the new key file", notice)
	}
	if fi, err := os.Stat(filepath.Join(dir, "cache-1.key")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("generated key file: %v, %v; want mode 0600", fi, err)
	}

	keys, notice = run(func(c signerv1.SignerServiceClient) {
		if _, err := c.GenerateKey(t.Context(), &signerv1.GenerateKeyRequest{Name: "cache-2"}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.RetireKey(t.Context(), &signerv1.RetireKeyRequest{Name: "cache-1"}); err != nil {
			t.Fatal(err)
		}
	})
	if notice != "" {
		t.Errorf("second start generated a key: %q", notice)
	}
	want := []keyState{{"cache-2", true}, {"cache-1", false}}
	if len(keys) != 2 || keys[0] != want[0] || keys[1] != want[1] {
		t.Errorf("after generate and retire: %v, want %v", keys, want)
	}

	// The third start generates nothing (cache-2 is active) and keeps
	// cache-1 retired.
	keys, notice = run(func(signerv1.SignerServiceClient) {})
	if notice != "" || len(keys) != 2 || keys[0] != want[0] || keys[1] != want[1] {
		t.Errorf("after a restart: %v (notice %q), want %v", keys, notice, want)
	}
}

func TestRunNoActiveKey(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	opts := options()
	opts.KeyDir = t.TempDir()
	err = Run(t.Context(), opts, lis)
	if err == nil || !strings.Contains(err.Error(), "no active key") {
		t.Errorf("Run with an empty key directory = %v, want no active key", err)
	}
}

// TestRunMetrics checks /metrics counts signatures and /healthz answers.
func TestRunMetrics(t *testing.T) {
	dir := t.TempDir()
	writeKey(t, filepath.Join(dir, "key"), "cache-1")
	mlis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	opts := options(filepath.Join(dir, "key"))
	opts.MetricsListener = mlis
	r := start(t, opts)
	client := signerv1.NewSignerServiceClient(r.conn)
	if _, err := client.Sign(t.Context(), &signerv1.SignRequest{Fingerprints: []string{fingerprint, fingerprint}}, grpc.WaitForReady(true)); err != nil {
		t.Fatal(err)
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
	for _, want := range []string{
		`nixcache_signer_signatures_total{key="cache-1"} 2`,
		`grpc_server_handled_total{grpc_code="OK",grpc_method="Sign",grpc_service="nixcache.signer.v1.SignerService",grpc_type="unary"} 1`,
		"nixcache_signer_active_keys 1",
	} {
		if code != 200 || !strings.Contains(body, want) {
			t.Errorf("/metrics: %d, lacks %q", code, want)
		}
	}
	if code, body := get("/healthz"); code != 200 {
		t.Errorf("/healthz: %d %q", code, body)
	}
	if err := r.shutdown(t); err != nil {
		t.Fatal(err)
	}
	if _, err := http.Get(base + "/healthz"); err == nil {
		t.Error("/healthz still answers after Run returned")
	}
}
