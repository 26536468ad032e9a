package httpapi

import (
	"net/http"
	"testing"

	"github.com/nixcache/nixcache/platform/auth"
)

// TestRouteScopes checks the scope every route needs, written here apart
// from the route table: with private reads, a request without a token is
// refused (401) before its handler runs, except where nothing is
// checked; a read token is refused (403) where a push is needed.
func TestRouteScopes(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Auth.PublicRead = false })
	p := e.addPath("scoped-1.0", 1000)
	nar := "/nar/" + p.fileHash.NixBase32() + ".nar.xz"
	tests := []struct {
		method, path string
		need         auth.Scope // 0: nothing checked by the route table
	}{
		{"GET", "/", 0},
		{"GET", "/no-such-thing", 0},
		{"HEAD", "/no-such-thing", 0},
		{"PUT", "/no-such-thing", auth.Push},
		{"GET", "/nix-cache-info", auth.Read},
		{"HEAD", "/nix-cache-info", auth.Read},
		{"PUT", "/nix-cache-info", auth.Push},
		{"GET", "/" + p.hash + ".narinfo", auth.Read},
		{"HEAD", "/" + p.hash + ".narinfo", auth.Read},
		{"PUT", "/" + p.hash + ".narinfo", auth.Push},
		{"GET", nar, auth.Read},
		{"HEAD", nar, auth.Read},
		{"PUT", nar, auth.Push},
		{"GET", "/log/" + p.hash + "-scoped-1.0.drv", auth.Read},
		{"PUT", "/log/" + p.hash + "-scoped-1.0.drv", auth.Push},
		{"GET", "/" + p.hash + ".ls", auth.Read},
		{"PUT", "/" + p.hash + ".ls", auth.Push},
		{"GET", "/realisations/sha256:0000!out.doi", auth.Read},
		{"PUT", "/realisations/sha256:0000!out.doi", auth.Push},
		{"HEAD", "/debuginfo/0123456789abcdef", auth.Read},
		{"PUT", "/debuginfo/0123456789abcdef", auth.Push},
	}
	for _, tt := range tests {
		anon := e.do(t, request{method: tt.method, path: tt.path, body: []byte("x")})
		if got := anon.code == http.StatusUnauthorized; got != (tt.need != 0) {
			t.Errorf("%s %s without a token: %d %s", tt.method, tt.path, anon.code, anon.body)
		}
		reader := e.do(t, request{method: tt.method, path: tt.path, body: []byte("x"), bearer: readToken})
		if got := reader.code == http.StatusForbidden; got != (tt.need == auth.Push) {
			t.Errorf("%s %s with a read token: %d %s", tt.method, tt.path, reader.code, reader.body)
		}
	}
}

// TestRoutePatterns checks the route table's own patterns.
func TestRoutePatterns(t *testing.T) {
	tests := []struct {
		pattern, path string
		want          bool
	}{
		{"/nix-cache-info", "/nix-cache-info", true},
		{"/nix-cache-info", "/nix-cache-info/", false},
		{"/nar/{name...}", "/nar/", true},
		{"/nar/{name...}", "/nar/a/b", true},
		{"/nar/{name...}", "/nar", false},
		{"/{hash}.narinfo", "/x.narinfo", true},
		{"/{hash}.narinfo", "/.narinfo", false},
		{"/{hash}.narinfo", "/x/y.narinfo", false},
		{"/{hash}.narinfo", "/x.narinfox", false},
		{"{path...}", "*", true},
		{"{path...}", "", true},
	}
	for _, tt := range tests {
		if got := parsePattern(tt.pattern).match(tt.path); got != tt.want {
			t.Errorf("%s matches %q: %v, want %v", tt.pattern, tt.path, got, tt.want)
		}
	}
}
