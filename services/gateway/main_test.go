package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestUsage: the exit codes of platform/program: 0 after -h (the manual
// printed), 2 on bad usage, 1 when the program fails.
func TestUsage(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		env      map[string]string
		wantCode int
		want     []string // substrings of stderr
	}{
		{name: "help", args: []string{"-h"}, wantCode: 0, want: []string{"-index-addr", "$NIXCACHE_INDEX_ADDR", "deprecated and ignored"}},
		{name: "unknown flag", args: []string{"-bogus"}, wantCode: 2, want: []string{"bogus"}},
		{name: "stray argument", args: []string{"serve"}, wantCode: 2, want: []string{`nixcache-gateway: unexpected argument "serve"`}},
		{name: "bad env", env: map[string]string{"NIXCACHE_PRIORITY": "high"}, wantCode: 2, want: []string{"NIXCACHE_PRIORITY"}},
		{name: "bad log level", args: []string{"-log-level", "loud"}, wantCode: 2, want: []string{"loud"}},
		{name: "listen fails", args: []string{"-listen", "127.0.0.1:-1"}, wantCode: 1, want: []string{"nixcache-gateway: listen"}},
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
