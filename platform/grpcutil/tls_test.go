package grpcutil

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/nixcache/nixcache/platform/grpcutil/tlstest"
)

// files returns TLSFiles for a certificate of ca named name, trusting
// trust.
func files(ca, trust *tlstest.CA, name string, sans ...string) *TLSFiles {
	cert, key := ca.Issue(name, sans...)
	return &TLSFiles{Cert: cert, Key: key, CA: trust.File}
}

// serveTLS serves the health service over mutual TLS with f on
// 127.0.0.1:0 and returns its address.
func serveTLS(t *testing.T, f *TLSFiles) string {
	t.Helper()
	opts, err := f.ServerOptions(nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(opts) != 1 {
		t.Fatalf("ServerOptions of enabled TLS files: %d options, want 1", len(opts))
	}
	srv := NewServer(slog.New(slog.DiscardHandler), opts...)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = srv.Serve(ctx, lis, time.Second); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return lis.Addr().String()
}

// check calls the health service at addr once, over a new connection
// with dial's credentials, and returns the error.
func check(t *testing.T, addr string, dial grpc.DialOption) error {
	t.Helper()
	cc, err := Dial(addr, dial)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
	return err
}

func dialOption(t *testing.T, f *TLSFiles, target string) grpc.DialOption {
	t.Helper()
	o, err := f.DialOption(target, nil)
	if err != nil {
		t.Fatal(err)
	}
	return o
}

func TestMutualTLS(t *testing.T) {
	ca := tlstest.NewCA(t, "nixcache test CA")
	other := tlstest.NewCA(t, "another CA")
	addr := serveTLS(t, files(ca, ca, "index", "index", "127.0.0.1"))
	_, port, _ := net.SplitHostPort(addr)
	caPool := x509.NewCertPool()
	caPool.AddCert(ca.Cert)
	goodCert, goodKey := ca.Issue("gateway")
	goodPair, err := tls.LoadX509KeyPair(goodCert, goodKey)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name   string
		target string
		dial   grpc.DialOption
		ok     bool
	}{
		{name: "valid client certificate", target: addr, ok: true,
			dial: dialOption(t, files(ca, ca, "gateway"), addr)},
		{name: "server named by DNS", target: "dns:///localhost:" + port, ok: false,
			// The server's certificate names index and 127.0.0.1, not localhost.
			dial: dialOption(t, files(ca, ca, "gateway"), "dns:///localhost:"+port)},
		{name: "plain text", target: addr, ok: false,
			dial: grpc.WithTransportCredentials(insecure.NewCredentials())},
		{name: "TLS without a client certificate", target: addr, ok: false,
			dial: grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: caPool, ServerName: "127.0.0.1"}))},
		{name: "client certificate of another CA", target: addr, ok: false,
			dial: dialOption(t, files(other, ca, "gateway"), addr)},
		{name: "client trusts another CA", target: addr, ok: false,
			dial: dialOption(t, files(ca, other, "gateway"), addr)},
		{name: "TLS 1.2", target: addr, ok: false,
			dial: grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: caPool, ServerName: "127.0.0.1",
				Certificates: []tls.Certificate{goodPair}, MaxVersion: tls.VersionTLS12}))},
		{name: "TLS 1.3 by hand", target: addr, ok: true,
			dial: grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: caPool, ServerName: "127.0.0.1",
				Certificates: []tls.Certificate{goodPair}}))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := check(t, tt.target, tt.dial)
			if tt.ok && err != nil {
				t.Fatalf("health check: %v, want it served", err)
			}
			if !tt.ok {
				if err == nil {
					t.Fatal("health check served, want it refused")
				}
				t.Logf("refused: %v", err)
				if c := status.Code(err); c != codes.Unavailable {
					t.Errorf("health check: code %s (%v), want Unavailable", c, err)
				}
			}
		})
	}
}

// TestMutualTLSReload: CA files rewritten while the server runs are used
// for the next connections, on both ends.
func TestMutualTLSReload(t *testing.T) {
	ca := tlstest.NewCA(t, "nixcache test CA")
	other := tlstest.NewCA(t, "another CA")
	dir := t.TempDir()
	serverCA := filepath.Join(dir, "server-trusts.pem")
	clientCA := filepath.Join(dir, "client-trusts.pem")
	copyFile(t, other.File, serverCA)
	copyFile(t, ca.File, clientCA)
	srvFiles := files(ca, ca, "signer", "127.0.0.1")
	srvFiles.CA = serverCA
	addr := serveTLS(t, srvFiles)
	cliFiles := files(ca, ca, "index")
	cliFiles.CA = clientCA
	dial := dialOption(t, cliFiles, addr)

	if err := check(t, addr, dial); err == nil {
		t.Fatal("served a client whose CA the server does not trust yet")
	}
	copyFile(t, ca.File, serverCA)
	if err := check(t, addr, dial); err != nil {
		t.Fatalf("after the server's client CA file was rewritten: %v", err)
	}
	copyFile(t, other.File, clientCA)
	if err := check(t, addr, dial); err == nil {
		t.Fatal("the client accepted a server after its CA file no longer trusts the server's CA")
	}
	// A broken file keeps the last good one.
	if err := os.WriteFile(serverCA, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	copyFile(t, ca.File, clientCA)
	if err := check(t, addr, dial); err != nil {
		t.Fatalf("a broken client CA file on the server should keep the previous one: %v", err)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	// Rewritten in place, as an editor or a renewal would; the size
	// or the mtime changes.
	if err := os.WriteFile(to+".tmp", b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(to+".tmp", to); err != nil {
		t.Fatal(err)
	}
}

func TestTLSFlagsValidate(t *testing.T) {
	ca := tlstest.NewCA(t, "nixcache test CA")
	cert, key := ca.Issue("index", "127.0.0.1")
	notPEM := filepath.Join(t.TempDir(), "empty.pem")
	if err := os.WriteFile(notPEM, []byte("hello\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		client  bool
		args    []string
		wantErr []string // all in the message; none: valid
		enabled bool
	}{
		{name: "none"},
		{name: "server, all three", args: []string{"-tls-cert", cert, "-tls-key", key, "-tls-client-ca", ca.File}, enabled: true},
		{name: "client, all three", client: true, args: []string{"-grpc-tls-cert", cert, "-grpc-tls-key", key, "-grpc-tls-ca", ca.File}, enabled: true},
		{name: "server, no key", args: []string{"-tls-cert", cert, "-tls-client-ca", ca.File},
			wantErr: []string{"-tls-key not set"}, enabled: true},
		{name: "client, only CA", client: true, args: []string{"-grpc-tls-ca", ca.File},
			wantErr: []string{"-grpc-tls-cert and -grpc-tls-key not set"}, enabled: true},
		{name: "key of another certificate", args: []string{"-tls-cert", cert, "-tls-key", keyOf(t, ca), "-tls-client-ca", ca.File},
			wantErr: []string{"-tls-cert", "-tls-key", "private key does not match"}, enabled: true},
		{name: "missing CA file", client: true, args: []string{"-grpc-tls-cert", cert, "-grpc-tls-key", key, "-grpc-tls-ca", "/nonexistent/ca.pem"},
			wantErr: []string{"-grpc-tls-ca", "no such file"}, enabled: true},
		{name: "CA file without a certificate", args: []string{"-tls-cert", cert, "-tls-key", key, "-tls-client-ca", notPEM},
			wantErr: []string{"-tls-client-ca", "no PEM certificate"}, enabled: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := flag.NewFlagSet("x", flag.ContinueOnError)
			f := ServerTLSFlags(fs)
			if tt.client {
				f = ClientTLSFlags(fs)
			}
			if err := fs.Parse(tt.args); err != nil {
				t.Fatal(err)
			}
			if f.Enabled() != tt.enabled {
				t.Errorf("Enabled() = %v, want %v", f.Enabled(), tt.enabled)
			}
			err := f.Validate()
			if len(tt.wantErr) == 0 {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate: nil, want an error with %q", tt.wantErr)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate: %q, want it to contain %q", err, w)
				}
			}
		})
	}
}

// keyOf returns the key file of a fresh certificate of ca.
func keyOf(t *testing.T, ca *tlstest.CA) string {
	_, key := ca.Issue("other")
	return key
}

func TestServerName(t *testing.T) {
	for target, want := range map[string]string{
		"127.0.0.1:5011":   "127.0.0.1",
		"index:5011":       "index",
		"dns:///index:501": "index",
		"[::1]:5010":       "::1",
		"signer":           "signer",
	} {
		if got := ServerName(target); got != want {
			t.Errorf("ServerName(%q) = %q, want %q", target, got, want)
		}
	}
}

// TestClientNames: with ClientNames, only a client certificate carrying
// one of them (common name or DNS name) is served.
func TestClientNames(t *testing.T) {
	ca := tlstest.NewCA(t, "nixcache test CA")
	server := files(ca, ca, "signer", "127.0.0.1")
	server.ClientNames = []string{"nixcache-index", "index.internal"}
	addr := serveTLS(t, server)
	for name, c := range map[string]struct {
		files *TLSFiles
		ok    bool
	}{
		"named by CN":        {files(ca, ca, "nixcache-index"), true},
		"named by DNS name":  {files(ca, ca, "some-index", "index.internal"), true},
		"another of the CA":  {files(ca, ca, "nixcache-gateway", "gateway"), false},
		"a name as a prefix": {files(ca, ca, "nixcache-index-2"), false},
	} {
		err := check(t, addr, dialOption(t, c.files, addr))
		if c.ok != (err == nil) {
			t.Errorf("%s: %v, want served %v", name, err, c.ok)
		}
	}
	if err := (&TLSFiles{ClientNames: []string{"x"}}).Validate(); err == nil {
		t.Error("ClientNames without TLS files: valid")
	}
}
