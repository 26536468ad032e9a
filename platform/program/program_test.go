package program

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		env      map[string]string
		wantCode int
		want     string // substring of stderr
		wantN    int    // the flag's value when parsing succeeded
	}{
		{name: "flag", args: []string{"-n", "3"}, wantN: 3},
		{name: "env twin", env: map[string]string{"NIXCACHE_N": "4"}, wantN: 4},
		{name: "help", args: []string{"-h"}, wantCode: ExitOK, want: "number of things"},
		{name: "unknown flag", args: []string{"-bogus"}, wantCode: ExitUsage, want: "bogus"},
		{name: "bad value", args: []string{"-n", "many"}, wantCode: ExitUsage, want: "many"},
		{name: "bad env", env: map[string]string{"NIXCACHE_N": "many"}, wantCode: ExitUsage, want: "NIXCACHE_N"},
		{name: "stray argument", args: []string{"-n", "1", "serve"}, wantCode: ExitUsage, want: `prog: unexpected argument "serve"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			var stderr bytes.Buffer
			fs := FlagSet("prog", &stderr)
			n := fs.Int("n", 0, "number of things")
			code := Exit("prog", Parse(fs, tt.args), &stderr)
			if code != tt.wantCode {
				t.Errorf("exit %d, want %d; stderr:\n%s", code, tt.wantCode, &stderr)
			}
			if !strings.Contains(stderr.String(), tt.want) {
				t.Errorf("stderr lacks %q:\n%s", tt.want, &stderr)
			}
			if tt.want == "" && *n != tt.wantN {
				t.Errorf("-n = %d, want %d", *n, tt.wantN)
			}
		})
	}
}

func TestExit(t *testing.T) {
	tests := []struct {
		name     string
		err      error
		wantCode int
		want     string // all of stderr
	}{
		{name: "done", wantCode: ExitOK},
		{name: "failed", err: errors.New("disk full"), wantCode: ExitFailure, want: "prog: disk full\n"},
		{name: "usage", err: Usagef("want %d arguments", 3), wantCode: ExitUsage, want: "prog: want 3 arguments\n"},
		{name: "wrapped usage", err: fmt.Errorf("config: %w", UsageError(errors.New("bad"))), wantCode: ExitUsage, want: "prog: config: bad\n"},
		{name: "nil usage", err: UsageError(nil), wantCode: ExitOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stderr bytes.Buffer
			if code := Exit("prog", tt.err, &stderr); code != tt.wantCode || stderr.String() != tt.want {
				t.Errorf("Exit = %d, printed %q; want %d, %q", code, &stderr, tt.wantCode, tt.want)
			}
		})
	}
}

func TestLogger(t *testing.T) {
	var stderr bytes.Buffer
	if _, err := Logger(&stderr, "xml", "info"); Exit("prog", err, &stderr) != ExitUsage {
		t.Errorf("log format xml: %v, want a usage error", err)
	}
	if log, err := Logger(&stderr, "text", "debug"); err != nil || log == nil {
		t.Errorf("text, debug: %v, %v", log, err)
	}
}
