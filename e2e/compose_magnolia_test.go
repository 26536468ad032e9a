package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestComposeMagnolia runs the compose deployment the way a build host
// that served its store with nix-serve moves to it
// (docs/migrating-from-nix-serve.md): the signer signs with the key
// nix-serve had, made by the real `nix-store --generate-binary-cache-key`
// and given to the signer alone (docker/signing-key.yml); the index pulls
// misses through from an upstream cache over HTTPS (docker/upstream.yml),
// here another cache in a container of its own whose certificate a CA of
// the test signed; and with the host-store switch (docker/local-store.yml)
// a client whose nix.conf kept its nix-serve lines, trusting only that
// key, substitutes a path built on the host.
func TestComposeMagnolia(t *testing.T) {
	const keyName = "magnolia.cache-1"
	secretFile, public := binaryCacheKey(t, keyName)
	// As the page says: the signer's uid owns it, nobody else may read it.
	if err := os.Chown(secretFile, 65532, 65532); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(secretFile, 0o600); err != nil {
		t.Fatal(err)
	}
	up := newHTTPSUpstream(t)

	p := newComposeProject(t)
	p.withFile(filepath.Join(p.root, "docker", "signing-key.yml"), "NIXCACHE_SIGNING_KEY_FILE="+secretFile)
	p.withFile(filepath.Join(p.root, "docker", "upstream.yml"),
		"NIXCACHE_UPSTREAM=https://"+up.host+":8443", "NIXCACHE_UPSTREAM_KEY="+up.public)
	p.withFile(up.override(t, p.name))
	p.up()

	steps := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"nix-serve's key signs", func(t *testing.T) {
			if got := p.publicKey(); got != public {
				t.Fatalf("the signer's key is %q, want nix-serve's %q", got, public)
			}
		}},
		{"key file readable by the signer alone", func(t *testing.T) {
			p.assertSecretOnlyInSigner(secretFile, "/run/secrets/signing-key")
		}},
		{"only the index has a route out", func(t *testing.T) {
			p.assertOnlyIndexOn(p.name + "_egress")
		}},
		{"pull-through over HTTPS", func(t *testing.T) {
			store := filepath.Join(t.TempDir(), "store")
			p.mustNix(nixConfig("trusted-public-keys = "+public), "nix", "copy", "--from", p.URL, "--to", store, up.top)
			local := p.pathInfos("--recursive", up.top)
			copied := p.pathInfos("--store", store, "--recursive", up.top)
			remote := p.pathInfos("--store", p.URL, "--recursive", up.top)
			if len(copied) != len(local) {
				t.Fatalf("fresh store has %d paths of the upstream closure, want %d", len(copied), len(local))
			}
			for path, want := range local {
				if copied[path].NarHash != want.NarHash {
					t.Errorf("%s: fresh store has NarHash %q, host %q", path, copied[path].NarHash, want.NarHash)
				}
				// Fetched from the upstream (its signature), re-signed.
				if sigs := remote[path].Signatures; !hasSigBy(sigs, keyName) || !hasSigBy(sigs, up.keyName) {
					t.Errorf("%s: signatures %v, want %s's and the upstream's", path, sigs, keyName)
				}
			}
		}},
		{"host store through the nix-serve URL", func(t *testing.T) {
			socket := startNixDaemonOn(t, "/nix/var/nix/daemon-socket/socket")
			st, err := os.Stat(filepath.Dir(socket))
			if err != nil {
				t.Fatal(err)
			}
			p.withFile(filepath.Join(p.root, "docker", "local-store.yml"),
				fmt.Sprintf("NIXCACHE_NIX_SOCKET_GID=%d", st.Sys().(*syscall.Stat_t).Gid))
			p.up()
			top, closure := buildClosure(t)
			for _, path := range closure {
				p.waitStatus("GET", p.URL+"/"+hashPart(path)+".narinfo", 200, time.Minute)
			}
			// A client's nix.conf from the nix-serve days, unchanged: the
			// cache's URL and nix-serve's public key.
			client := nixConfig("substituters = "+p.URL, "trusted-public-keys = "+public)
			store := filepath.Join(t.TempDir(), "store")
			p.mustNix(client, "nix-store", "--store", store, "--realise", top)
			local := p.pathInfos("--recursive", top)
			copied := p.pathInfos("--store", store, "--recursive", top)
			if len(copied) != len(closure) {
				t.Fatalf("fresh store has %d paths of the host's closure, want %d", len(copied), len(closure))
			}
			for path, want := range local {
				if copied[path].NarHash != want.NarHash {
					t.Errorf("%s: fresh store has NarHash %q, host %q", path, copied[path].NarHash, want.NarHash)
				}
			}
			// The secret is still where it was, and only there.
			p.assertSecretOnlyInSigner(secretFile, "/run/secrets/signing-key")
		}},
	}
	for _, s := range steps {
		start := time.Now()
		ok := t.Run(s.name, func(t *testing.T) {
			p.t = t
			s.run(t)
		})
		p.t = t
		t.Logf("%s: %v", s.name, time.Since(start).Round(time.Millisecond))
		if !ok {
			return
		}
	}
}

// assertSecretOnlyInSigner: the host's key file is mounted into the signer
// alone, at dest, and holds there what the host's file holds; the index
// and the gateway have no file at dest and no mount of it.
func (p *composeProject) assertSecretOnlyInSigner(hostFile, dest string) {
	t := p.t
	t.Helper()
	want := readFile(t, hostFile)
	for _, s := range services {
		id := p.container(s)
		var mounts []dockerMount
		if err := json.Unmarshal([]byte(p.docker("inspect", "-f", "{{json .Mounts}}", id)), &mounts); err != nil {
			t.Fatal(err)
		}
		mounted := false
		for _, m := range mounts {
			if m.Source == hostFile || m.Destination == dest {
				mounted = true
			}
		}
		if mounted != (s == "signer") {
			t.Errorf("%s mounts the key file: %v, want %v (mounts %+v)", s, mounted, s == "signer", mounts)
		}
		dst := filepath.Join(t.TempDir(), "key")
		out, err := exec.Command("docker", "cp", id+":"+dest, dst).CombinedOutput()
		switch {
		case s == "signer" && err != nil:
			t.Errorf("docker cp the key out of the signer: %v\n%s", err, out)
		case s == "signer":
			if readFile(t, dst) != want {
				t.Errorf("the signer's %s is not the host's key file", dest)
			}
		case err == nil:
			t.Errorf("%s has the key file at %s", s, dest)
		}
	}
}

// assertOnlyIndexOn: network is not internal (it has a route out), and of
// the services only the index is on it.
func (p *composeProject) assertOnlyIndexOn(network string) {
	t := p.t
	t.Helper()
	if internal := strings.TrimSpace(p.docker("network", "inspect", "-f", "{{.Internal}}", network)); internal != "false" {
		t.Errorf("network %s: internal %s, want a route out", network, internal)
	}
	for _, s := range services {
		var nets map[string]json.RawMessage
		if err := json.Unmarshal([]byte(p.docker("inspect", "-f", "{{json .NetworkSettings.Networks}}", p.container(s))), &nets); err != nil {
			t.Fatal(err)
		}
		if _, on := nets[network]; on != (s == "index") {
			t.Errorf("%s on %s: %v, want %v", s, network, on, s == "index")
		}
	}
}

// httpsUpstream is a binary cache served over HTTPS from a container on
// the index's egress network: a closure built on the host, copied with
// `nix copy --to file://` signed by a key of its own, served by
// testdata/httpscache with a certificate of a CA made here.
type httpsUpstream struct {
	dir     string // the image's build context: Dockerfile, binary, cache/, tls/
	caFile  string
	host    string // its name on the network, in its certificate
	keyName string
	public  string
	top     string
}

func newHTTPSUpstream(t *testing.T) *httpsUpstream {
	t.Helper()
	up := &httpsUpstream{dir: t.TempDir(), host: "upstream", keyName: "e2e-compose-upstream-1"}
	secret, public := binaryCacheKey(t, up.keyName)
	up.public = public
	top, _ := buildClosure(t)
	up.top = top
	mustNix(t, nixConfig(), "nix", "copy", "--to", "file://"+filepath.Join(up.dir, "cache")+"?compression=xz&secret-key="+secret, top)

	build := exec.Command("go", "build", "-trimpath", "-o", filepath.Join(up.dir, "httpscache"), "./testdata/httpscache")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build testdata/httpscache: %v\n%s", err, out)
	}
	up.caFile = writeTLS(t, filepath.Join(up.dir, "tls"), up.host)
	dockerfile := "FROM scratch\n" +
		"COPY httpscache /httpscache\n" +
		"COPY cache/ /cache/\n" +
		"COPY --chown=65532:65532 tls/ /tls/\n" +
		"USER 65532:65532\n" +
		`ENTRYPOINT ["/httpscache"]` + "\n"
	if err := os.WriteFile(filepath.Join(up.dir, "Dockerfile"), []byte(dockerfile), 0o644); err != nil {
		t.Fatal(err)
	}
	return up
}

// override is the compose file that adds the upstream's container to the
// egress network of docker/upstream.yml and has the index trust the
// test's CA, as docker/upstream.yml's header tells for a private CA.
func (up *httpsUpstream) override(t *testing.T, project string) string {
	t.Helper()
	content := fmt.Sprintf(`services:
  %[1]s:
    build:
      context: %[2]s
    image: nixcache-e2e-upstream:%[3]s
    read_only: true
    cap_drop: [ALL]
    networks: [egress]
  index:
    environment:
      SSL_CERT_FILE: /run/secrets/upstream-ca
    secrets: [tokens, upstream-ca]
secrets:
  upstream-ca:
    file: %[4]s
`, up.host, up.dir, project, up.caFile)
	path := filepath.Join(t.TempDir(), "upstream-test.yml")
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// writeTLS makes a CA and a server certificate for host signed by it into
// dir (cert.pem, key.pem) and returns the CA certificate's file.
func writeTLS(t *testing.T, dir, host string) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "nixcache e2e upstream CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: host},
		DNSNames:     []string{host},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, typ string, der []byte, mode os.FileMode) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), mode); err != nil {
			t.Fatal(err)
		}
		return path
	}
	write("cert.pem", "CERTIFICATE", der, 0o644)
	write("key.pem", "PRIVATE KEY", keyDER, 0o600)
	caFile := filepath.Join(filepath.Dir(dir), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o644); err != nil {
		t.Fatal(err)
	}
	return caFile
}
