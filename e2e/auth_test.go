package e2e

import (
	"net/http"
	"path/filepath"
	"testing"
)

// TestPrivateReads: with -public-read=false the gateway serves nothing
// without a read token, and the real Nix client substitutes with one from
// its netrc file. With public reads (the default), a wrong token in a netrc
// file does not get in the way.
func TestPrivateReads(t *testing.T) {
	c := newCluster(t)
	top, closure := buildClosure(t)
	mustNix(t, nixConfig("netrc-file = "+c.netrc(c.pushToken)), "nix", "copy", "--to", c.URL, top)

	trusting := func(extra ...string) string {
		return nixConfig(append([]string{"trusted-public-keys = " + c.publicKey}, extra...)...)
	}
	// substitutes reports whether nix copy --from brings the whole
	// closure into a fresh store.
	substitutes := func(config string) bool {
		t.Helper()
		store := filepath.Join(t.TempDir(), "store")
		if _, _, err := nixRun(t, config, "nix", "copy", "--from", c.URL, "--to", store, top); err != nil {
			return false
		}
		if got := pathInfos(t, nixConfig(), "--store", store, "--recursive", top); len(got) != len(closure) {
			t.Errorf("substituted %d paths of %d", len(got), len(closure))
		}
		return true
	}

	if !substitutes(trusting("netrc-file = " + c.netrc("stale-token"))) {
		t.Error("public reads: a wrong token in the netrc file broke substitution")
	}

	c.stop("gateway")
	c.extraArgs["gateway"] = []string{"-public-read=false"}
	c.start("gateway")

	for _, tt := range []struct {
		name   string
		config string
		want   bool
	}{
		{"no netrc", trusting(), false},
		{"wrong token", trusting("netrc-file = " + c.netrc("not-a-token")), false},
		{"read token", trusting("netrc-file = " + c.netrc(c.readToken)), true},
		{"push token (push,read)", trusting("netrc-file = " + c.netrc(c.pushToken)), true},
	} {
		if got := substitutes(tt.config); got != tt.want {
			t.Errorf("private reads, %s: substituted %v, want %v", tt.name, got, tt.want)
		}
	}

	narinfo := c.URL + "/" + hashPart(top) + ".narinfo"
	for _, tt := range []struct {
		name  string
		url   string
		token string
		want  int
	}{
		{"narinfo, anonymous", narinfo, "", http.StatusUnauthorized},
		{"nix-cache-info, anonymous", c.URL + "/nix-cache-info", "", http.StatusUnauthorized},
		{"narinfo, wrong token", narinfo, "nope", http.StatusUnauthorized},
		{"narinfo, read token", narinfo, c.readToken, http.StatusOK},
		{"healthz, anonymous", c.URL + "/healthz", "", http.StatusOK},
	} {
		if got := httpStatus(t, "GET", tt.url, tt.token, nil); got != tt.want {
			t.Errorf("private reads, %s: %d, want %d", tt.name, got, tt.want)
		}
	}
}
