package e2e

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/credentials"
)

// genCerts runs scripts/gen-certs.sh, as docs/deploy.md tells operators to,
// into a fresh directory and returns it.
func genCerts(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "tls")
	out, err := exec.Command("../scripts/gen-certs.sh", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("scripts/gen-certs.sh: %v\n%s", err, out)
	}
	return dir
}

// withMutualTLS runs the signer and the index with mutual TLS, each
// service with its own certificate from one CA made by
// scripts/gen-certs.sh in dir.
func withMutualTLS(dir string) clusterOption {
	return func(c *cluster) {
		file := func(name string) string { return filepath.Join(dir, name) }
		// Mutual TLS is for services on several hosts: TCP.
		c.signerAddr, c.indexAddr = freeAddr(c.t), freeAddr(c.t)
		for _, s := range []string{"signer", "index"} {
			c.extraArgs[s] = append(c.extraArgs[s], "-tls-cert", file(s+".pem"), "-tls-key", file(s+".key"), "-tls-client-ca", file("ca.pem"))
		}
		for _, s := range []string{"index", "gateway"} {
			c.extraArgs[s] = append(c.extraArgs[s], "-grpc-tls-cert", file(s+".pem"), "-grpc-tls-key", file(s+".key"), "-grpc-tls-ca", file("ca.pem"))
		}
		pair, err := tls.LoadX509KeyPair(file("gateway.pem"), file("gateway.key"))
		if err != nil {
			c.t.Fatal(err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM([]byte(readFile(c.t, file("ca.pem")))) {
			c.t.Fatal("no certificate in ca.pem")
		}
		c.grpcCreds = credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: pool, MinVersion: tls.VersionTLS13})
	}
}

// runGrpcurl runs grpcurl with args and returns its combined output. A
// refused TLS handshake shows as a dial timeout (grpcurl retries the
// dial), so the connection timeout is short.
func runGrpcurl(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(grpcurlPath(t), append([]string{"-connect-timeout", "3", "-max-time", "10"}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// TestMutualTLS: with the services' gRPC over mutual TLS, Nix pushes and
// substitutes through the gateway as before; the signer and the index
// refuse grpcurl without a client certificate, with one of another CA,
// and in plain text, and answer it with a certificate of their CA; the
// healthcheck and list-keys subcommands take the client TLS flags.
func TestMutualTLS(t *testing.T) {
	certs := genCerts(t)
	other := genCerts(t)
	c := newCluster(t, withMutualTLS(certs))
	top, closure := buildClosure(t)

	mustNix(t, nixConfig("netrc-file = "+c.netrc(c.pushToken)), "nix", "copy", "--to", c.URL+"?compression=zstd", top)
	store := filepath.Join(t.TempDir(), "store")
	mustNix(t, nixConfig("trusted-public-keys = "+c.publicKey), "nix", "copy", "--from", c.URL, "--to", store, top)
	copied := pathInfos(t, nixConfig(), "--store", store, "--recursive", top)
	for _, p := range closure {
		if _, ok := copied[p]; !ok {
			t.Errorf("%s was not substituted over the mutual-TLS cluster", p)
		}
	}
	if r := httpDo(t, "GET", c.URL+"/readyz", "", nil, nil); r.status != 200 {
		t.Errorf("/readyz: %d %s", r.status, r.body)
	}

	file := func(dir, name string) string { return filepath.Join(dir, name) }
	calls := []struct {
		service, addr, method, data, want string
	}{
		{"signer", c.signerAddr, "nixcache.signer.v1.SignerService/ListKeys", "", c.publicKey},
		{"index", c.indexAddr, "nixcache.index.v1.IndexService/GetPathInfo", `{"hash_part":"` + hashPart(top) + `"}`, filepath.Base(top)},
	}
	for _, call := range calls {
		t.Run(call.service, func(t *testing.T) {
			withData := func(args ...string) []string {
				if call.data != "" {
					args = append(args, "-d", call.data)
				}
				return append(args, call.addr, call.method)
			}
			out, err := runGrpcurl(t, withData("-cacert", file(certs, "ca.pem"), "-cert", file(certs, "gateway.pem"), "-key", file(certs, "gateway.key"))...)
			if err != nil || !strings.Contains(out, call.want) {
				t.Errorf("grpcurl with a valid client certificate: %v, want %q in\n%s", err, call.want, out)
			}
			refused := []struct {
				name string
				args []string
			}{
				{"plain text", withData("-plaintext")},
				{"no client certificate", withData("-cacert", file(certs, "ca.pem"))},
				{"client certificate of another CA", withData("-cacert", file(certs, "ca.pem"), "-cert", file(other, "gateway.pem"), "-key", file(other, "gateway.key"))},
			}
			for _, r := range refused {
				out, err := runGrpcurl(t, r.args...)
				if err == nil || strings.Contains(out, call.want) {
					t.Errorf("grpcurl, %s: %v, want it refused:\n%s", r.name, err, out)
				} else {
					t.Logf("grpcurl, %s: refused: %s", r.name, strings.TrimSpace(out))
				}
			}
		})
	}

	// The subcommands the container health checks and operators use.
	sub := func(env []string, bin string, args ...string) (string, error) {
		cmd := exec.Command(filepath.Join(binDir, bin), args...)
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	tlsFlags := []string{"-grpc-tls-cert", file(certs, "index.pem"), "-grpc-tls-key", file(certs, "index.key"), "-grpc-tls-ca", file(certs, "ca.pem")}
	if out, err := sub(nil, "nixcache-index", "healthcheck", "-addr", c.indexAddr); err == nil {
		t.Errorf("index healthcheck in plain text against mutual TLS passed:\n%s", out)
	}
	if out, err := sub(nil, "nixcache-index", append([]string{"healthcheck", "-addr", c.indexAddr}, tlsFlags...)...); err != nil {
		t.Errorf("index healthcheck with the TLS flags: %v\n%s", err, out)
	}
	env := []string{"NIXCACHE_GRPC_TLS_CERT=" + file(certs, "signer.pem"), "NIXCACHE_GRPC_TLS_KEY=" + file(certs, "signer.key"), "NIXCACHE_GRPC_TLS_CA=" + file(certs, "ca.pem")}
	if out, err := sub(env, "nixcache-signer", "healthcheck", "-addr", c.signerAddr); err != nil {
		t.Errorf("signer healthcheck with NIXCACHE_GRPC_TLS_*: %v\n%s", err, out)
	}
	if out, err := sub(env, "nixcache-signer", "list-keys", "-addr", c.signerAddr); err != nil || strings.TrimSpace(out) != c.publicKey {
		t.Errorf("list-keys with NIXCACHE_GRPC_TLS_*: %v, %q, want %q", err, out, c.publicKey)
	}
	if out, err := sub(nil, "nixcache-signer", "list-keys", "-addr", c.signerAddr, "-timeout", "3s"); err == nil {
		t.Errorf("list-keys in plain text against mutual TLS: %q, want it refused", out)
	}
}

// TestMutualTLSBadFlags: a service refuses to start with half its TLS
// flags or a file that does not load, naming the flag.
func TestMutualTLSBadFlags(t *testing.T) {
	certs := genCerts(t)
	tests := []struct {
		bin  string
		args []string
		want string
	}{
		{"nixcache-signer", []string{"-tls-cert", filepath.Join(certs, "signer.pem"), "-tls-client-ca", filepath.Join(certs, "ca.pem")}, "-tls-key not set"},
		{"nixcache-index", []string{"-grpc-tls-cert", filepath.Join(certs, "index.pem"), "-grpc-tls-key", filepath.Join(certs, "signer.key"), "-grpc-tls-ca", filepath.Join(certs, "ca.pem")}, "-grpc-tls-key"},
		{"nixcache-gateway", []string{"-grpc-tls-cert", filepath.Join(certs, "gateway.pem"), "-grpc-tls-key", filepath.Join(certs, "gateway.key"), "-grpc-tls-ca", filepath.Join(certs, "gateway.key")}, "-grpc-tls-ca"},
	}
	base := map[string][]string{
		"nixcache-signer":  {"-metrics-listen", freeAddr(t), "-key-files", filepath.Join(t.TempDir(), "k"), "-generate-key", "x-1"},
		"nixcache-index":   {"-metrics-listen", freeAddr(t), "-data-dir", t.TempDir()},
		"nixcache-gateway": nil,
	}
	for _, tt := range tests {
		args := append(append([]string{"-listen", freeAddr(t)}, base[tt.bin]...), tt.args...)
		out, err := exec.Command(filepath.Join(binDir, tt.bin), args...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), tt.want) {
			t.Errorf("%s %q: %v, want a failure naming %q:\n%s", tt.bin, tt.args, err, tt.want, out)
		}
	}
}
