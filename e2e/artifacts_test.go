package e2e

import (
	"encoding/json"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
)

// The tests in this file cover the side files of the cache with the real
// Nix client: build logs, NAR listings, realisations and debug info.

// sideTree builds a derivation whose output has a file, a directory, a
// symlink and an executable, and whose builder prints marker to its log.
// It returns the output and the derivation.
func sideTree(t *testing.T, marker string) (out, drv string) {
	t.Helper()
	expr := `{ marker }: derivation {
  name = "side-tree";
  inherit marker;
  system = builtins.currentSystem;
  builder = "/bin/sh";
  PATH = "/usr/bin:/bin";
  args = [ "-c" ''
    echo "build log line ${marker}"
    mkdir -p $out/sub/empty
    echo "hello ${marker}" > $out/file
    printf '#!/bin/sh\n' > $out/sub/run
    chmod 755 $out/sub/run
    ln -s ../file $out/sub/link
  '' ];
}`
	out = strings.TrimSpace(mustNix(t, nixConfig(), "nix-build", "-E", expr, "--argstr", "marker", marker, "--no-out-link"))
	drv = strings.TrimSpace(mustNix(t, nixConfig(), "nix-store", "--query", "--deriver", out))
	return out, drv
}

// TestBuildLogPushed: nix store copy-log uploads a log, nix log reads it
// back through the cache.
func TestBuildLogPushed(t *testing.T) {
	c := newCluster(t)
	push := nixConfig("netrc-file = " + c.netrc(c.pushToken))
	marker := randomHex(t, 8)
	out, drv := sideTree(t, marker)

	mustNix(t, push, "nix", "copy", "--to", c.URL, out)
	// nix log reads the derivation from the store it is given.
	mustNix(t, push, "nix", "copy", "--derivation", "--to", c.URL, drv)
	mustNix(t, push, "nix", "store", "copy-log", "--to", c.URL, drv)

	got := mustNix(t, nixConfig(), "nix", "log", "--store", c.URL, drv)
	if !strings.Contains(got, "build log line "+marker) {
		t.Errorf("nix log --store %s %s printed %q", c.URL, drv, got)
	}
	base := strings.TrimPrefix(drv, "/nix/store/")
	if st := httpStatus(t, "PUT", c.URL+"/log/"+base, "", strings.NewReader("x")); st != http.StatusUnauthorized {
		t.Errorf("anonymous PUT of a log: %d, want 401", st)
	}
	for _, bad := range []string{"/log/" + strings.TrimSuffix(base, ".drv"), "/log/..%2f..%2fetc%2fpasswd", "/log/x.drv"} {
		if st := httpStatus(t, "PUT", c.URL+bad, c.pushToken, strings.NewReader("x")); st != http.StatusBadRequest {
			t.Errorf("PUT %s: %d, want 400", bad, st)
		}
	}
}

// TestBuildLogLocal: the log of a derivation built on the host is served
// in local-store mode, decompressed from Nix's .bz2.
func TestBuildLogLocal(t *testing.T) {
	c := newCluster(t, withLocalStore(startNixDaemon(t)))
	marker := randomHex(t, 8)
	_, drv := sideTree(t, marker)
	got := mustNix(t, nixConfig(), "nix", "log", "--store", c.URL, drv)
	if !strings.Contains(got, "build log line "+marker) {
		t.Errorf("nix log --store %s %s printed %q", c.URL, drv, got)
	}
	resp := httpDo(t, "GET", c.URL+"/log/"+strings.TrimPrefix(drv, "/nix/store/"), "", nil, nil)
	if resp.status != http.StatusOK || !strings.Contains(resp.body, marker) {
		t.Errorf("GET log: %d %q", resp.status, resp.body)
	}
}

// TestListings: nix store ls and cat through the cache match the local
// store, for paths pushed with and without a listing and a local path;
// the cache serves a valid listing for each.
func TestListings(t *testing.T) {
	c := newCluster(t, withLocalStore(startNixDaemon(t)))
	push := nixConfig("netrc-file = " + c.netrc(c.pushToken))
	for _, tc := range []struct{ name, query string }{
		{"pushed-with-listing", "?write-nar-listing=true"},
		{"pushed-without-listing", ""},
		{"local", "-"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			marker := randomHex(t, 8)
			out, _ := sideTree(t, marker)
			if tc.query != "-" {
				mustNix(t, push, "nix", "copy", "--to", c.URL+tc.query, out)
			}
			want := mustNix(t, nixConfig(), "nix", "store", "ls", "-R", "-l", out)
			got := mustNix(t, nixConfig(), "nix", "store", "ls", "--store", c.URL, "-R", "-l", out)
			if got != want {
				t.Errorf("nix store ls via the cache:\n%s\nlocal:\n%s", got, want)
			}
			cat := mustNix(t, nixConfig(), "nix", "store", "cat", "--store", c.URL, out+"/file")
			if cat != "hello "+marker+"\n" {
				t.Errorf("nix store cat: %q", cat)
			}
			resp := httpDo(t, "GET", c.URL+"/"+hashPart(out)+".ls", "", nil, nil)
			var l struct {
				Version int `json:"version"`
				Root    struct {
					Type    string                     `json:"type"`
					Entries map[string]json.RawMessage `json:"entries"`
				} `json:"root"`
			}
			if resp.status != http.StatusOK || json.Unmarshal([]byte(resp.body), &l) != nil ||
				l.Version != 1 || l.Root.Type != "directory" || len(l.Root.Entries) != 2 {
				t.Errorf("GET .ls: %d %s", resp.status, resp.body)
			}
		})
	}
	bad := `{"version":1,"root":{"type":"regular"}}`
	if st := httpStatus(t, "PUT", c.URL+"/0123456789abcdfghijklmnpqrsvwxyz.ls", c.pushToken, strings.NewReader(bad)); st != http.StatusBadRequest {
		t.Errorf("PUT of a bad listing: %d, want 400", st)
	}
	big := strings.NewReader(strings.Repeat(" ", 65<<20))
	if st := httpStatus(t, "PUT", c.URL+"/0123456789abcdfghijklmnpqrsvwxyz.ls", c.pushToken, big); st != http.StatusRequestEntityTooLarge {
		t.Errorf("PUT of a 65 MiB listing: %d, want 413", st)
	}
}

// TestDebugInfo: a push with index-debug-info=true of a path holding
// lib/debug/.build-id/<xx>/<rest>.debug uploads a debug-info link, served
// back as JSON.
func TestDebugInfo(t *testing.T) {
	c := newCluster(t)
	push := nixConfig("netrc-file = " + c.netrc(c.pushToken))
	buildID := "c8" + randomHex(t, 19)
	expr := `derivation {
  name = "debug-info";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  PATH = "/usr/bin:/bin";
  args = [ "-c" "mkdir -p $out/lib/debug/.build-id/c8 && cp /bin/true $out/lib/debug/.build-id/c8/` + buildID[2:] + `.debug" ];
}`
	out := strings.TrimSpace(mustNix(t, nixConfig(), "nix-build", "-E", expr, "--no-out-link"))
	mustNix(t, push, "nix", "copy", "--to", c.URL+"?index-debug-info=true", out)
	resp := httpDo(t, "GET", c.URL+"/debuginfo/"+buildID, "", nil, nil)
	var d struct{ Archive, Member string }
	if resp.status != http.StatusOK || json.Unmarshal([]byte(resp.body), &d) != nil ||
		!strings.HasPrefix(d.Archive, "../nar/") || d.Member != "lib/debug/.build-id/c8/"+buildID[2:]+".debug" {
		t.Fatalf("GET debuginfo: %d %s", resp.status, resp.body)
	}
	if st := httpStatus(t, "GET", c.URL+"/debuginfo/XYZ", "", nil); st != http.StatusBadRequest {
		t.Errorf("GET of a bad build id: %d, want 400", st)
	}
}

// TestRealisations: a content-addressed derivation pushed with nix copy
// is substituted into a fresh store, through its realisation.
func TestRealisations(t *testing.T) {
	c := newCluster(t)
	ca := "extra-experimental-features = ca-derivations"
	push := nixConfig(ca, "netrc-file = "+c.netrc(c.pushToken))
	marker := randomHex(t, 8)
	expr := `derivation {
  name = "ca-thing";
  marker = "` + marker + `";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  PATH = "/usr/bin:/bin";
  __contentAddressed = true;
  outputHashMode = "recursive";
  outputHashAlgo = "sha256";
  args = [ "-c" "echo $marker > $out" ];
}`
	out := builtOut(t, mustNix(t, nixConfig(ca), "nix", "build", "--impure", "--expr", expr, "--no-link", "--json"))
	mustNix(t, push, "nix", "copy", "--to", c.URL, "--impure", "--expr", expr)

	store := filepath.Join(t.TempDir(), "store")
	got := builtOut(t, mustNix(t, nixConfig(ca, "substituters = "+c.URL, "trusted-public-keys = "+c.publicKey),
		"nix", "build", "--store", store, "--impure", "--expr", expr, "--no-link", "--json", "--max-jobs", "0"))
	if got != out {
		t.Errorf("substituted %q, built %q", got, out)
	}
	if data := readFile(t, filepath.Join(store, strings.TrimPrefix(out, "/"))); data != marker+"\n" {
		t.Errorf("substituted output holds %q", data)
	}
}

// builtOut returns the out path of the one derivation nix build --json
// printed.
func builtOut(t *testing.T, js string) string {
	t.Helper()
	var built []struct {
		Outputs map[string]string `json:"outputs"`
	}
	if err := json.Unmarshal([]byte(js), &built); err != nil || len(built) != 1 || built[0].Outputs["out"] == "" {
		t.Fatalf("nix build --json printed %q (%v)", js, err)
	}
	return built[0].Outputs["out"]
}
