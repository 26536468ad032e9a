package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestUsage: the exit codes of platform/program: 0 after -h (the manual
// printed), 2 on bad usage, 1 when the program fails; each subcommand the
// same.
func TestUsage(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing")
	notDir := filepath.Join(dir, "file")
	if err := os.WriteFile(notDir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		args     []string
		env      map[string]string
		wantCode int
		want     []string // substrings of stderr
	}{
		{name: "help", args: []string{"-h"}, wantCode: 0, want: []string{"-data-dir", "$NIXCACHE_DATA_DIR", "-upstream"}},
		{name: "unknown flag", args: []string{"-bogus"}, wantCode: 2, want: []string{"bogus"}},
		{name: "stray argument", args: []string{"serve"}, wantCode: 2, want: []string{`nixcache-index: unexpected argument "serve"`}},
		{name: "bad env", env: map[string]string{"NIXCACHE_MAX_NAR_SIZE": "big"}, wantCode: 2, want: []string{"NIXCACHE_MAX_NAR_SIZE"}},
		{name: "bad log format", args: []string{"-log-format", "xml"}, wantCode: 2, want: []string{"xml"}},
		{name: "bad configuration", args: []string{"-nar-backend", "tape"}, wantCode: 2, want: []string{"bad configuration", "tape"}},
		{name: "listen fails", args: []string{"-listen", "unix:" + filepath.Join(notDir, "index.sock"), "-metrics-listen", ""}, wantCode: 1, want: []string{notDir}},
		{name: "check help", args: []string{"check", "-h"}, wantCode: 0, want: []string{"usage: nixcache-index check", "-data-dir"}},
		{name: "check stray argument", args: []string{"check", "now"}, wantCode: 2, want: []string{`nixcache-index check: unexpected argument "now"`}},
		{name: "check fails", args: []string{"check", "-data-dir", missing}, wantCode: 1, want: []string{"nixcache-index check: ", missing}},
		{name: "backup help", args: []string{"backup", "-h"}, wantCode: 0, want: []string{"usage: nixcache-index backup", "-admin-token"}},
		{name: "backup without a token", args: []string{"backup"}, wantCode: 2, want: []string{"nixcache-index backup: no token"}},
		{name: "healthcheck stray argument", args: []string{"healthcheck", "now"}, wantCode: 2, want: []string{"unexpected argument"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
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
