package app

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/nixcache/nixcache/nix/signature"
	"github.com/nixcache/nixcache/platform/grpcutil"
	"github.com/nixcache/nixcache/platform/logging"
	signerv1 "github.com/nixcache/nixcache/proto/nixcache/signer/v1"
	"github.com/nixcache/nixcache/services/signer/internal/keyfile"
)

const fingerprint = "1;/nix/store/1p9q0bz6f22dyxh4lw8xs08p4201vyq4-f;sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw;120;"

// running is a Run in progress.
type running struct {
	conn *grpc.ClientConn
	stop context.CancelFunc
	done chan error
}

// start runs Run on 127.0.0.1:0 and connects to it.
func start(t *testing.T, opts Options) *running {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	ctx, cancel := context.WithCancel(t.Context())
	r := &running{stop: cancel, done: make(chan error, 1)}
	go func() { r.done <- Run(ctx, opts, lis) }()
	r.conn, err = grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		r.conn.Close()
	})
	return r
}

// shutdown cancels Run's context and returns what Run returned.
func (r *running) shutdown(t *testing.T) error {
	t.Helper()
	r.stop()
	select {
	case err := <-r.done:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return 10s after its context was cancelled")
		return nil
	}
}

func writeKey(t *testing.T, path, name string) signature.SecretKey {
	t.Helper()
	k, err := signature.Generate(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(k.Encode()), 0o600); err != nil {
		t.Fatal(err)
	}
	return k
}

func options(keyFiles ...string) Options {
	return Options{KeyFiles: keyFiles, StoreDir: "/nix/store", MaxBatch: 100, ShutdownGrace: 5 * time.Second}
}

func TestRunServesUntilCancelled(t *testing.T) {
	dir := t.TempDir()
	key := writeKey(t, filepath.Join(dir, "key"), "cache-1")
	r := start(t, options(filepath.Join(dir, "key")))

	health := healthpb.NewHealthClient(r.conn)
	for _, service := range []string{"", signerv1.SignerService_ServiceDesc.ServiceName} {
		resp, err := health.Check(t.Context(), &healthpb.HealthCheckRequest{Service: service}, grpc.WaitForReady(true))
		if err != nil {
			t.Fatalf("health check %q: %v", service, err)
		}
		if resp.Status != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("health of %q = %v, want SERVING", service, resp.Status)
		}
	}
	resp, err := signerv1.NewSignerServiceClient(r.conn).Sign(t.Context(), &signerv1.SignRequest{Fingerprints: []string{fingerprint}})
	if err != nil {
		t.Fatal(err)
	}
	if !key.Public().Verify(fingerprint, resp.Results[0].Signatures[0]) {
		t.Error("signature does not verify")
	}
	if err := r.shutdown(t); err != nil {
		t.Errorf("Run = %v, want nil after cancel", err)
	}
}

func TestRunRefusesToStart(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	writeKey(t, good, "cache-1")
	open := filepath.Join(dir, "open")
	writeKey(t, open, "cache-2")
	if err := os.Chmod(open, 0o644); err != nil {
		t.Fatal(err)
	}
	dup := filepath.Join(dir, "dup")
	writeKey(t, dup, "cache-1")

	tests := []struct {
		name   string
		modify func(*Options)
		want   []string
	}{
		{name: "no key files", modify: func(o *Options) { o.KeyFiles = nil }, want: []string{"-key-files"}},
		{name: "world-readable key", modify: func(o *Options) { o.KeyFiles = []string{good, open} }, want: []string{open, "group or others", "chmod 600"}},
		{name: "missing key", modify: func(o *Options) { o.KeyFiles = []string{filepath.Join(dir, "missing")} }, want: []string{"missing"}},
		{name: "duplicate names", modify: func(o *Options) { o.KeyFiles = []string{good, dup} }, want: []string{`"cache-1"`, dup, good}},
		{name: "bad store dir", modify: func(o *Options) { o.StoreDir = "store" }, want: []string{"store"}},
		{name: "zero batch", modify: func(o *Options) { o.MaxBatch = 0 }, want: []string{"max batch"}},
		{name: "bad key name to generate", modify: func(o *Options) {
			o.KeyFiles = []string{filepath.Join(dir, "new")}
			o.GenerateKey = "a b"
		}, want: []string{"key name"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lis, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer lis.Close()
			opts := options(good)
			tt.modify(&opts)
			err = Run(t.Context(), opts, lis) // returns at once: nothing is served
			if err == nil {
				t.Fatal("Run = nil, want an error")
			}
			for _, want := range tt.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not contain %q", err, want)
				}
			}
		})
	}
}

func TestRunGeneratesKeyOnce(t *testing.T) {
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "signer", "secret-key")
	opts := options(keyFile)
	opts.GenerateKey = "cache.example.org-1"

	listKeys := func(wantNotice bool) []*signerv1.PublicKey {
		t.Helper()
		var notices bytes.Buffer
		opts.Notices = &notices
		r := start(t, opts)
		resp, err := signerv1.NewSignerServiceClient(r.conn).ListKeys(t.Context(), &signerv1.ListKeysRequest{}, grpc.WaitForReady(true))
		if err != nil {
			t.Fatal(err)
		}
		if err := r.shutdown(t); err != nil {
			t.Fatal(err)
		}
		if len(resp.Keys) != 1 {
			t.Fatalf("ListKeys = %v, want one key", resp.Keys)
		}
		switch n := notices.String(); {
		case wantNotice && !strings.Contains(n, resp.Keys[0].PublicKey):
			t.Errorf("notice %q does not show the public key %s", n, resp.Keys[0].PublicKey)
		case !wantNotice && n != "":
			t.Errorf("notice %q when no key was generated", n)
		}
		return resp.Keys
	}

	first := listKeys(true)
	if first[0].Name != "cache.example.org-1" {
		t.Errorf("generated key named %q", first[0].Name)
	}
	pub, err := os.ReadFile(keyfile.PublicPath(keyFile))
	if err != nil {
		t.Fatal(err)
	}
	if string(pub) != first[0].PublicKey {
		t.Errorf("public key file holds %q, the signer uses %q", pub, first[0].PublicKey)
	}
	fi, err := os.Stat(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v, want 0600", fi.Mode())
	}

	second := listKeys(false)
	if second[0].PublicKey != first[0].PublicKey {
		t.Errorf("second start uses key %s, first used %s", second[0].PublicKey, first[0].PublicKey)
	}
}

// TestLogsHoldNoSecret runs the signer through startup (generating one key,
// loading another), calls, and shutdown with debug logs, and looks for the
// secret keys in every form in the logs and notices.
func TestLogsHoldNoSecret(t *testing.T) {
	dir := t.TempDir()
	generated := filepath.Join(dir, "generated")
	existing := filepath.Join(dir, "existing")
	writeKey(t, existing, "cache-old-1")

	for _, format := range []string{"json", "text"} {
		t.Run(format, func(t *testing.T) {
			os.Remove(generated)
			var logs, notices bytes.Buffer
			log, err := logging.New(&logs, format, "debug")
			if err != nil {
				t.Fatal(err)
			}
			opts := options(generated, existing)
			opts.GenerateKey = "cache-new-1"
			opts.Log = log
			opts.Notices = &notices
			r := start(t, opts)
			client := signerv1.NewSignerServiceClient(r.conn)
			if _, err := client.Sign(t.Context(), &signerv1.SignRequest{Fingerprints: []string{fingerprint}}, grpc.WaitForReady(true)); err != nil {
				t.Fatal(err)
			}
			if _, err := client.Sign(t.Context(), &signerv1.SignRequest{Fingerprints: []string{"bad"}}); err == nil {
				t.Fatal("Sign of a bad fingerprint succeeded")
			}
			if _, err := client.ListKeys(t.Context(), &signerv1.ListKeysRequest{}); err != nil {
				t.Fatal(err)
			}
			if err := r.shutdown(t); err != nil {
				t.Fatal(err)
			}

			out := logs.String() + notices.String()
			// The test can fail: the logs show the run happened.
			for _, want := range []string{"generated a new signing key", "signer serving", "SignerService/Sign", "cache-new-1", "cache-old-1"} {
				if !strings.Contains(out, want) {
					t.Errorf("logs lack %q:\n%s", want, out)
				}
			}
			for _, file := range []string{generated, existing} {
				for name, secret := range secretForms(t, file) {
					if strings.Contains(out, secret) {
						t.Errorf("logs contain the %s of %s:\n%s", name, file, out)
					}
				}
			}
		})
	}
}

// secretForms returns the secret key of a key file in the forms a leak
// could take.
func secretForms(t *testing.T, file string) map[string]string {
	t.Helper()
	text, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	_, b64, _ := strings.Cut(strings.TrimSpace(string(text)), ":")
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(raw) != 64 {
		t.Fatalf("%s: not a key file", file)
	}
	seed := raw[:32]
	forms := map[string]string{
		"key file text":      strings.TrimSpace(string(text)),
		"base64 key":         b64,
		"base64 seed":        base64.StdEncoding.EncodeToString(seed),
		"base64 seed prefix": base64.StdEncoding.EncodeToString(seed[:30]), // what the key's base64 starts with
		"raw base64 seed":    base64.RawStdEncoding.EncodeToString(seed),
		"hex seed":           hex.EncodeToString(seed),
		"byte list of seed":  strings.Trim(fmt.Sprint(seed), "[]"),
	}
	// The first 42 base64 characters encode the seed alone; a piece of 16
	// of them is a leak too.
	const piece = 16
	for i := 0; i+piece <= 42; i++ {
		forms[fmt.Sprintf("base64 key characters %d-%d", i, i+piece)] = b64[i : i+piece]
	}
	return forms
}

// TestAuditTrail: served on a Unix socket, every signature is logged with
// its store path, its key and the caller's pid and uid (the kernel's word),
// and counted by key in /metrics.
func TestAuditTrail(t *testing.T) {
	dir := t.TempDir()
	writeKey(t, filepath.Join(dir, "key"), "cache-1")
	sock := filepath.Join(dir, "run", "signer.sock")
	lis, err := grpcutil.ListenConfig{Addr: "unix:" + sock}.Listen(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	mlis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	opts := options(filepath.Join(dir, "key"))
	opts.Log = slog.New(slog.NewJSONHandler(&logs, nil))
	opts.MetricsListener = mlis
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, opts, lis) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	conn, err := grpc.NewClient("unix:"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	const other = "1;/nix/store/7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-hello-2.12;sha256:1i9kxmk8s2k1zpv0fcz6xvn8mxbsqjdpc9yr72ilwi5dbwkn0kqz;226552;"
	if _, err := signerv1.NewSignerServiceClient(conn).Sign(t.Context(),
		&signerv1.SignRequest{Fingerprints: []string{fingerprint, other}}, grpc.WaitForReady(true)); err != nil {
		t.Fatal(err)
	}

	caller := fmt.Sprintf("unix peer pid=%d uid=%d gid=%d", os.Getpid(), os.Getuid(), os.Getgid())
	for _, path := range []string{"/nix/store/1p9q0bz6f22dyxh4lw8xs08p4201vyq4-f", "/nix/store/7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-hello-2.12"} {
		found := false
		for _, line := range strings.Split(logs.String(), "\n") {
			var rec struct {
				Msg       string   `json:"msg"`
				StorePath string   `json:"store_path"`
				Keys      []string `json:"keys"`
				Caller    string   `json:"caller"`
			}
			if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "signed" && rec.StorePath == path {
				found = true
				if len(rec.Keys) != 1 || rec.Keys[0] != "cache-1" || rec.Caller != caller {
					t.Errorf("audit line of %s: keys %q, caller %q; want [cache-1], %q", path, rec.Keys, rec.Caller, caller)
				}
			}
		}
		if !found {
			t.Errorf("no audit line for %s in:\n%s", path, logs.String())
		}
	}
	resp, err := http.Get("http://" + mlis.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := `nixcache_signer_signatures_total{key="cache-1"} 2`; !strings.Contains(string(body), want) {
		t.Errorf("/metrics lacks %q:\n%s", want, body)
	}
}

// syncBuffer is a bytes.Buffer safe for the logger and the test at once.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
