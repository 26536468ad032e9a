package main

import (
	"crypto/x509"
	"os"
	"os/exec"
	"testing"
)

// TestFallbackRoots: on a system without CA certificates, as in the FROM
// scratch image, the index still has roots to check an https:// upstream
// with, those compiled in.
func TestFallbackRoots(t *testing.T) {
	if os.Getenv("NIXCACHE_TEST_NO_SYSTEM_ROOTS") == "1" {
		pool, err := x509.SystemCertPool()
		if err != nil {
			t.Fatalf("system cert pool: %v", err)
		}
		if pool.Equal(x509.NewCertPool()) {
			t.Fatal("no CA roots without the system's: the fallback roots are not compiled in")
		}
		return
	}
	// The roots are loaded once per process: look in a new one, pointed at
	// no certificates.
	cmd := exec.Command(os.Args[0], "-test.run=^TestFallbackRoots$", "-test.count=1")
	cmd.Env = append(os.Environ(),
		"NIXCACHE_TEST_NO_SYSTEM_ROOTS=1",
		"SSL_CERT_FILE="+t.TempDir()+"/none.pem",
		"SSL_CERT_DIR="+t.TempDir(),
	)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
}
