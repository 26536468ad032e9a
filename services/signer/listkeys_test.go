package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nixcache/nixcache/services/signer/internal/app"
)

// startSigner serves a signer with a key generated as name on 127.0.0.1:0
// and returns its address and the key file.
func startSigner(t *testing.T, keyName string) (addr, keyFile string) {
	t.Helper()
	keyFile = filepath.Join(t.TempDir(), "secret.key")
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- app.Run(ctx, app.Options{KeyFiles: []string{keyFile}, GenerateKey: keyName, StoreDir: "/nix/store", MaxBatch: 10}, lis)
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("signer: %v", err)
		}
	})
	return lis.Addr().String(), keyFile
}

func TestListKeys(t *testing.T) {
	addr, keyFile := startSigner(t, "list-keys-test-1")
	var stdout, stderr bytes.Buffer
	if code := listKeys([]string{"-addr", addr}, &stdout, &stderr); code != 0 {
		t.Fatalf("list-keys exit %d: %s", code, &stderr)
	}
	pub, err := os.ReadFile(keyFile + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := stdout.String(), strings.TrimSpace(string(pub))+"\n"; got != want {
		t.Errorf("list-keys printed %q, want %q", got, want)
	}
}

func TestListKeysFails(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := lis.Addr().String()
	lis.Close()
	for _, tt := range []struct {
		args []string
		code int
	}{
		{[]string{"-addr", closed, "-timeout", "2s"}, 1},
		{[]string{"extra"}, 2},
		{[]string{"-bogus"}, 2},
	} {
		var stdout, stderr bytes.Buffer
		if code := listKeys(tt.args, &stdout, &stderr); code != tt.code {
			t.Errorf("list-keys %q: exit %d, want %d; stderr %q", tt.args, code, tt.code, &stderr)
		}
		if stdout.Len() > 0 {
			t.Errorf("list-keys %q printed %q on failure", tt.args, &stdout)
		}
	}
}

func TestHealthcheckSubcommand(t *testing.T) {
	addr, _ := startSigner(t, "health-test-1")
	var stderr bytes.Buffer
	if code := run([]string{"healthcheck", "-addr", addr}, &stderr); code != 0 {
		t.Errorf("healthcheck of a running signer: exit %d: %s", code, &stderr)
	}
}
