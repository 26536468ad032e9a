package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nixcache/nixcache/nix/signature"
)

func TestKeygen(t *testing.T) {
	dir := t.TempDir()
	sec, pub := filepath.Join(dir, "secret"), filepath.Join(dir, "public")
	var stderr bytes.Buffer
	if code := run([]string{"keygen", "cache.example.org-1", sec, pub}, &stderr); code != 0 {
		t.Fatalf("keygen exit %d: %s", code, &stderr)
	}
	for file, want := range map[string]os.FileMode{sec: 0o600, pub: 0o644} {
		fi, err := os.Stat(file)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != want {
			t.Errorf("%s: mode %v, want %v", file, fi.Mode(), want)
		}
	}
	sk, err := signature.LoadSecretKeyFile(sec)
	if err != nil {
		t.Fatal(err)
	}
	text, err := os.ReadFile(pub)
	if err != nil {
		t.Fatal(err)
	}
	pk, err := signature.ParsePublicKey(string(text))
	if err != nil {
		t.Fatal(err)
	}
	if sk.Name != "cache.example.org-1" || pk.String() != sk.Public().String() {
		t.Errorf("key pair %v / %s does not match", sk, pk)
	}

	// Refuses to overwrite.
	stderr.Reset()
	if code := run([]string{"keygen", "other-1", sec, filepath.Join(dir, "public2")}, &stderr); code != 1 {
		t.Errorf("keygen over an existing file: exit %d, want 1", code)
	}
	if !strings.Contains(stderr.String(), "already exists") {
		t.Errorf("stderr %q does not say the file exists", &stderr)
	}
	if again, err := signature.LoadSecretKeyFile(sec); err != nil || again.Public().String() != sk.Public().String() {
		t.Errorf("existing secret key changed: %v, %v", again, err)
	}
}

func TestUsage(t *testing.T) {
	dir := t.TempDir()
	open := filepath.Join(dir, "open-key")
	k, err := signature.Generate("cache-1")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(open, []byte(k.Encode()), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o644); err != nil {
		t.Fatal(err)
	}
	dup := filepath.Join(dir, "dup")
	if err := os.WriteFile(dup, []byte(k.Encode()), 0o600); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name     string
		args     []string
		env      map[string]string
		wantCode int
		want     []string // substrings of stderr
	}{
		{name: "help", args: []string{"-h"}, wantCode: 0, want: []string{"keygen NAME SECRET-FILE PUBLIC-FILE", "-key-files", "$NIXCACHE_KEY_FILES", "-generate-key", "-max-batch", "-key-dir", "-metrics-listen"}},
		{name: "keygen help", args: []string{"keygen", "-h"}, wantCode: 0, want: []string{"nix-store --generate-binary-cache-key"}},
		{name: "keygen too few args", args: []string{"keygen", "name", "secret"}, wantCode: 2, want: []string{"want 3 arguments"}},
		{name: "unknown flag", args: []string{"-bogus"}, wantCode: 2, want: []string{"bogus"}},
		{name: "stray argument", args: []string{"serve"}, wantCode: 2, want: []string{`unexpected argument "serve"`}},
		{name: "bad log format", args: []string{"-log-format", "xml"}, wantCode: 2, want: []string{"xml"}},
		{name: "bad env", env: map[string]string{"NIXCACHE_MAX_BATCH": "many"}, wantCode: 2, want: []string{"NIXCACHE_MAX_BATCH"}},
		{name: "no key files", args: []string{"-listen", "127.0.0.1:0", "-insecure-tcp"}, wantCode: 1, want: []string{"-key-files"}},
		{name: "world-readable key", args: []string{"-listen", "127.0.0.1:0", "-insecure-tcp", "-key-files", open}, wantCode: 1, want: []string{open, "group or others", "chmod 600"}},
		{name: "world-readable key from env", env: map[string]string{"NIXCACHE_KEY_FILES": open, "NIXCACHE_LISTEN": "127.0.0.1:0", "NIXCACHE_INSECURE_TCP": "true"}, wantCode: 1, want: []string{"chmod 600"}},
		{name: "plain TCP refused", args: []string{"-listen", "127.0.0.1:0", "-key-files", dup}, wantCode: 1, want: []string{"without mutual TLS", "-insecure-tcp"}},
		{name: "duplicate key names", args: []string{"-listen", "127.0.0.1:0", "-insecure-tcp", "-log-format", "text", "-key-files", dup + "," + dup}, wantCode: 1, want: []string{"already used"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The default metrics address may be taken on this machine.
			t.Setenv("NIXCACHE_METRICS_LISTEN", "")
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			var stderr bytes.Buffer
			code := run(tt.args, &stderr)
			if code != tt.wantCode {
				t.Errorf("exit %d, want %d; stderr:\n%s", code, tt.wantCode, &stderr)
			}
			for _, want := range tt.want {
				if !strings.Contains(stderr.String(), want) {
					t.Errorf("stderr lacks %q:\n%s", want, &stderr)
				}
			}
		})
	}
}
