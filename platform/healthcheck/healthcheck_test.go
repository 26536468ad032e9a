package healthcheck

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/nixcache/nixcache/platform/grpcutil"
	"github.com/nixcache/nixcache/platform/grpcutil/tlstest"
)

// grpcServer serves grpc.health.v1 on 127.0.0.1:0 with the given status of
// the whole server and returns its address.
func grpcServer(t *testing.T, status healthpb.HealthCheckResponse_ServingStatus) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	hs := health.NewServer()
	hs.SetServingStatus("", status)
	healthpb.RegisterHealthServer(srv, hs)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

// grpcUnixServer is grpcServer on a Unix socket; it returns "unix:PATH".
func grpcUnixServer(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "health.sock")
	lis, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	hs := health.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return "unix:" + path
}

// closedAddr is an address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	return addr
}

func httpServer(t *testing.T, cacheInfoStatus int) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/nix-cache-info" || r.Method != http.MethodGet || r.UserAgent() != UserAgent {
			http.NotFound(w, r)
			return
		}
		w.WriteHeader(cacheInfoStatus)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

func TestHealthcheck(t *testing.T) {
	tests := []struct {
		name     string
		probe    Probe
		addr     func(t *testing.T) string
		wantCode int
		wantErr  string // in stderr
	}{
		{"grpc serving", GRPC, func(t *testing.T) string { return grpcServer(t, healthpb.HealthCheckResponse_SERVING) }, 0, ""},
		{"grpc not serving", GRPC, func(t *testing.T) string { return grpcServer(t, healthpb.HealthCheckResponse_NOT_SERVING) }, 1, "NOT_SERVING"},
		{"grpc nothing listening", GRPC, closedAddr, 1, "unhealthy"},
		{"grpc unix socket", GRPC, grpcUnixServer, 0, ""},
		{"http 200", HTTPGet("/nix-cache-info"), func(t *testing.T) string { return httpServer(t, http.StatusOK) }, 0, ""},
		{"http 503", HTTPGet("/nix-cache-info"), func(t *testing.T) string { return httpServer(t, http.StatusServiceUnavailable) }, 1, "503"},
		{"http wrong path", HTTPGet("/healthz"), func(t *testing.T) string { return httpServer(t, http.StatusOK) }, 1, "404"},
		{"http nothing listening", HTTPGet("/nix-cache-info"), closedAddr, 1, "unhealthy"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stderr bytes.Buffer
			code := Main("prog", "127.0.0.1:1", tt.probe, []string{"-addr", tt.addr(t), "-timeout", "2s"}, &stderr)
			if code != tt.wantCode {
				t.Errorf("exit code %d, want %d; stderr %q", code, tt.wantCode, stderr.String())
			}
			if tt.wantErr != "" && !strings.Contains(stderr.String(), tt.wantErr) {
				t.Errorf("stderr %q does not contain %q", stderr.String(), tt.wantErr)
			}
			if tt.wantCode == 0 && stderr.Len() > 0 {
				t.Errorf("healthy, but printed %q", stderr.String())
			}
		})
	}
}

func TestMainUsage(t *testing.T) {
	probe := func(context.Context, string) error { t.Error("probe ran on bad usage"); return nil }
	for _, args := range [][]string{{"extra"}, {"-no-such-flag"}, {"-timeout", "soon"}} {
		var stderr bytes.Buffer
		if code := Main("prog", "127.0.0.1:1", probe, args, &stderr); code != 2 {
			t.Errorf("%q: exit code %d, want 2", args, code)
		}
	}
}

// TestMainDefaultAddr: without -addr the probe gets the service's own
// listen address, from NIXCACHE_LISTEN when set.
func TestMainDefaultAddr(t *testing.T) {
	tests := []struct {
		env, def, want string
	}{
		{"", "127.0.0.1:5010", "127.0.0.1:5010"},
		{"0.0.0.0:5011", "127.0.0.1:5011", "127.0.0.1:5011"},
		{":5000", "127.0.0.1:5000", "127.0.0.1:5000"},
		{"[::]:5010", "127.0.0.1:5010", "[::1]:5010"},
		{"10.1.2.3:6000", "127.0.0.1:5000", "10.1.2.3:6000"},
		{"", "0.0.0.0:5000", "127.0.0.1:5000"},
	}
	for _, tt := range tests {
		t.Setenv(ListenEnv, tt.env)
		var got string
		probe := func(_ context.Context, addr string) error { got = addr; return nil }
		if code := Main("prog", tt.def, probe, nil, &bytes.Buffer{}); code != 0 {
			t.Fatalf("exit code %d", code)
		}
		if got != tt.want {
			t.Errorf("NIXCACHE_LISTEN=%q, default %q: probed %q, want %q", tt.env, tt.def, got, tt.want)
		}
	}
}

// TestGRPCMainMutualTLS: against a server that requires client
// certificates, the check passes only with the client TLS flags, given on
// the command line or as NIXCACHE_GRPC_TLS_* variables.
func TestGRPCMainMutualTLS(t *testing.T) {
	ca := tlstest.NewCA(t, "nixcache test CA")
	srvCert, srvKey := ca.Issue("signer", "127.0.0.1")
	files := &grpcutil.TLSFiles{Cert: srvCert, Key: srvKey, CA: ca.File}
	opts, err := files.ServerOptions(nil)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(opts...)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	addr := lis.Addr().String()
	cliCert, cliKey := ca.Issue("probe")
	tlsArgs := []string{"-grpc-tls-cert", cliCert, "-grpc-tls-key", cliKey, "-grpc-tls-ca", ca.File}

	tests := []struct {
		name     string
		args     []string
		env      map[string]string
		wantCode int
		wantErr  string
	}{
		{name: "flags", args: tlsArgs},
		{name: "environment", env: map[string]string{
			"NIXCACHE_GRPC_TLS_CERT": cliCert, "NIXCACHE_GRPC_TLS_KEY": cliKey, "NIXCACHE_GRPC_TLS_CA": ca.File}},
		{name: "plain text", wantCode: 1, wantErr: "unhealthy"},
		{name: "no certificate", args: tlsArgs[2:], wantCode: 2, wantErr: "-grpc-tls-cert not set"},
		// Only the TLS flags have twins: NIXCACHE_TIMEOUT is not -timeout.
		{name: "other variables ignored", args: tlsArgs, env: map[string]string{"NIXCACHE_TIMEOUT": "soon"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			var stderr bytes.Buffer
			code := GRPCMain("prog", "127.0.0.1:1", append([]string{"-addr", addr, "-timeout", "3s"}, tt.args...), &stderr)
			if code != tt.wantCode {
				t.Errorf("exit code %d, want %d; stderr %q", code, tt.wantCode, stderr.String())
			}
			if tt.wantErr != "" && !strings.Contains(stderr.String(), tt.wantErr) {
				t.Errorf("stderr %q does not contain %q", stderr.String(), tt.wantErr)
			}
		})
	}
}
