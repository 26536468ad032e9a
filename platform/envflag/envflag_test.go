package envflag

import (
	"flag"
	"io"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestEnvName(t *testing.T) {
	for in, want := range map[string]string{
		"listen":          "NIXCACHE_LISTEN",
		"index-addr":      "NIXCACHE_INDEX_ADDR",
		"max.upload-size": "NIXCACHE_MAX_UPLOAD_SIZE",
	} {
		if got := EnvName(in); got != want {
			t.Errorf("EnvName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParsePrecedence(t *testing.T) {
	tests := []struct {
		name    string
		env     string
		args    []string
		want    string
		wantErr string
	}{
		{name: "default", want: "def"},
		{name: "env", env: "fromenv", want: "fromenv"},
		{name: "flag wins", env: "fromenv", args: []string{"-addr", "fromflag"}, want: "fromflag"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.env != "" {
				t.Setenv("NIXCACHE_ADDR", tt.env)
			}
			fs := flag.NewFlagSet("x", flag.ContinueOnError)
			addr := fs.String("addr", "def", "address")
			if err := Parse(fs, tt.args); err != nil {
				t.Fatal(err)
			}
			if *addr != tt.want {
				t.Errorf("addr = %q, want %q", *addr, tt.want)
			}
			if u := fs.Lookup("addr").Usage; !strings.Contains(u, "$NIXCACHE_ADDR") {
				t.Errorf("usage %q does not name the variable", u)
			}
		})
	}
}

func TestParseBadEnv(t *testing.T) {
	t.Setenv("NIXCACHE_TIMEOUT", "soon")
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Duration("timeout", time.Second, "timeout")
	err := Parse(fs, nil)
	if err == nil || !strings.Contains(err.Error(), "NIXCACHE_TIMEOUT") {
		t.Fatalf("err = %v, want one naming NIXCACHE_TIMEOUT", err)
	}
}

func TestParseOnly(t *testing.T) {
	t.Setenv("NIXCACHE_ADDR", "fromenv")
	t.Setenv("NIXCACHE_CERT", "cert.pem")
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	addr := fs.String("addr", "def", "address")
	cert := fs.String("cert", "", "certificate")
	if err := ParseOnly(fs, nil, "cert"); err != nil {
		t.Fatal(err)
	}
	if *addr != "def" || *cert != "cert.pem" {
		t.Errorf("addr %q, cert %q; want def (no twin) and cert.pem (twin)", *addr, *cert)
	}
}

func TestList(t *testing.T) {
	tests := []struct {
		name string
		env  string
		args []string
		want []string
	}{
		{name: "none", want: nil},
		{name: "repeated and comma-separated", args: []string{"-up", "a", "-up", "b,c", "-up", "d e"}, want: []string{"a", "b", "c", "d", "e"}},
		{name: "env", env: "a, b c", want: []string{"a", "b", "c"}},
		{name: "flags replace env", env: "a,b", args: []string{"-up", "c", "-up", "d"}, want: []string{"c", "d"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.env != "" {
				t.Setenv("NIXCACHE_UP", tt.env)
			}
			fs := flag.NewFlagSet("x", flag.ContinueOnError)
			var l List
			fs.Var(&l, "up", "upstreams")
			if err := Parse(fs, tt.args); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(l.Values, tt.want) {
				t.Errorf("values = %q, want %q", l.Values, tt.want)
			}
		})
	}
}
