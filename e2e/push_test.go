package e2e

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// pathInfo is what `nix path-info --json` prints of one path.
type pathInfo struct {
	Path       string   `json:"path"`
	NarHash    string   `json:"narHash"`
	NarSize    uint64   `json:"narSize"`
	References []string `json:"references"`
	Signatures []string `json:"signatures"`
}

func pathInfos(t *testing.T, config string, args ...string) map[string]pathInfo {
	t.Helper()
	out := mustNix(t, config, "nix", append([]string{"path-info", "--json"}, args...)...)
	var infos []pathInfo
	if err := json.Unmarshal([]byte(out), &infos); err != nil {
		t.Fatalf("path-info output: %v\n%s", err, out)
	}
	m := map[string]pathInfo{}
	for _, i := range infos {
		m[i.Path] = i
	}
	return m
}

// TestPushAndSubstitute pushes a closure with each compression, then
// substitutes it into fresh stores that trust only the cache's key.
func TestPushAndSubstitute(t *testing.T) { testPushAndSubstitute(t, newCluster(t)) }

func testPushAndSubstitute(t *testing.T, c *cluster) {
	push := nixConfig("netrc-file = " + c.netrc(c.pushToken))
	trusting := nixConfig("trusted-public-keys = " + c.publicKey)

	out, errOut, err := nixRun(t, nixConfig(), "nix", "store", "ping", "--store", c.URL)
	if err != nil || !strings.Contains(out+errOut, "Store URL: "+c.URL) {
		t.Errorf("nix store ping: %v, printed %q", err, out+errOut)
	}

	for _, compression := range []string{"xz", "zstd", "bzip2", "none"} {
		t.Run(compression, func(t *testing.T) {
			top, closure := buildClosure(t)
			local := pathInfos(t, nixConfig(), "--recursive", top)

			mustNix(t, push, "nix", "copy", "--to", c.URL+"?compression="+compression, top)

			// The cache knows every path, with the host's NAR hashes and our signature.
			remote := pathInfos(t, nixConfig(), "--store", c.URL, "--recursive", top)
			if len(remote) != len(closure) {
				t.Fatalf("cache has %d paths of the closure, want %d", len(remote), len(closure))
			}
			for _, p := range closure {
				r, ok := remote[p]
				if !ok {
					t.Fatalf("cache lacks %s", p)
				}
				if r.NarHash != local[p].NarHash || r.NarSize != local[p].NarSize {
					t.Errorf("%s: cache has %s/%d, host %s/%d", p, r.NarHash, r.NarSize, local[p].NarHash, local[p].NarSize)
				}
				if !hasSigBy(r.Signatures, "e2e-cache-1") {
					t.Errorf("%s: no signature by the cache key: %v", p, r.Signatures)
				}
			}

			// nix copy --from into a fresh store, trusting only the cache key.
			store := filepath.Join(t.TempDir(), "store")
			mustNix(t, trusting, "nix", "copy", "--from", c.URL, "--to", store, top)
			copied := pathInfos(t, nixConfig(), "--store", store, "--recursive", top)
			for _, p := range closure {
				if copied[p].NarHash != local[p].NarHash {
					t.Errorf("%s: fresh store has NarHash %q, host %q", p, copied[p].NarHash, local[p].NarHash)
				}
			}

			// nix-store -r with the cache as the only substituter.
			store2 := filepath.Join(t.TempDir(), "store")
			subst := nixConfig("substituters = "+c.URL, "trusted-public-keys = "+c.publicKey)
			mustNix(t, subst, "nix-store", "--store", store2, "--realise", top)
			realised := pathInfos(t, nixConfig(), "--store", store2, "--recursive", top)
			if len(realised) != len(closure) {
				t.Fatalf("realised %d paths, want %d", len(realised), len(closure))
			}
			for _, p := range closure {
				if realised[p].NarHash != local[p].NarHash {
					t.Errorf("%s: realised NarHash %q, host %q", p, realised[p].NarHash, local[p].NarHash)
				}
			}
			assertSameTree(t, top, filepath.Join(store2, strings.TrimPrefix(top, "/")))
		})
	}
}

// TestOtherKeyRefused: a client that trusts another key refuses our paths.
func TestOtherKeyRefused(t *testing.T) { testOtherKeyRefused(t, newCluster(t)) }

func testOtherKeyRefused(t *testing.T, c *cluster) {
	top, _ := buildClosure(t)
	mustNix(t, nixConfig("netrc-file = "+c.netrc(c.pushToken)), "nix", "copy", "--to", c.URL, top)

	dir := t.TempDir()
	mustNix(t, nixConfig(), "nix-store", "--generate-binary-cache-key", "other-1",
		filepath.Join(dir, "sec"), filepath.Join(dir, "pub"))
	otherPub := strings.TrimSpace(readFile(t, filepath.Join(dir, "pub")))

	store := filepath.Join(t.TempDir(), "store")
	_, stderr, err := nixRun(t, nixConfig("trusted-public-keys = "+otherPub), "nix", "copy", "--from", c.URL, "--to", store, top)
	if err == nil {
		t.Fatal("nix copy --from succeeded for a client that trusts another key")
	}
	if !strings.Contains(stderr, "lacks a valid signature") {
		t.Errorf("nix copy failed, but not for the signature:\n%s", stderr)
	}
	// The control: the same copy trusting the cache key works.
	mustNix(t, nixConfig("trusted-public-keys = "+c.publicKey), "nix", "copy", "--from", c.URL, "--to", store, top)
}

// TestPushNeedsCredentials: nix copy without a netrc, or with a read-only
// token, is refused and nothing is stored.
func TestPushNeedsCredentials(t *testing.T) { testPushNeedsCredentials(t, newCluster(t)) }

func testPushNeedsCredentials(t *testing.T, c *cluster) {
	top, _ := buildClosure(t)
	for name, config := range map[string]string{
		"no credentials":  nixConfig(),
		"read-only token": nixConfig("netrc-file = " + c.netrc(c.readToken)),
		"wrong token":     nixConfig("netrc-file = " + c.netrc("not-a-token")),
	} {
		if _, _, err := nixRun(t, config, "nix", "copy", "--to", c.URL, top); err == nil {
			t.Errorf("%s: nix copy --to succeeded", name)
		}
	}
	if status := httpStatus(t, "GET", c.URL+"/"+hashPart(top)+".narinfo", "", nil); status != http.StatusNotFound {
		t.Errorf("narinfo after refused pushes: %d, want 404", status)
	}
	// The control: with the push token it works.
	mustNix(t, nixConfig("netrc-file = "+c.netrc(c.pushToken)), "nix", "copy", "--to", c.URL, top)
	if status := httpStatus(t, "GET", c.URL+"/"+hashPart(top)+".narinfo", "", nil); status != http.StatusOK {
		t.Errorf("narinfo after push: %d, want 200", status)
	}
}

// TestRestartKeepsEverything: after all three services restart, what was
// pushed before is served and substitutes.
func TestRestartKeepsEverything(t *testing.T) { testRestartKeepsEverything(t, newCluster(t)) }

func testRestartKeepsEverything(t *testing.T, c *cluster) {
	top, closure := buildClosure(t)
	mustNix(t, nixConfig("netrc-file = "+c.netrc(c.pushToken)), "nix", "copy", "--to", c.URL+"?compression=zstd", top)

	c.stopAll()
	c.startAll()

	store := filepath.Join(t.TempDir(), "store")
	mustNix(t, nixConfig("trusted-public-keys = "+c.publicKey), "nix", "copy", "--from", c.URL, "--to", store, top)
	if got := pathInfos(t, nixConfig(), "--store", store, "--recursive", top); len(got) != len(closure) {
		t.Fatalf("after restart, substituted %d paths, want %d", len(got), len(closure))
	}
}

func hasSigBy(sigs []string, key string) bool {
	for _, s := range sigs {
		if strings.HasPrefix(s, key+":") {
			return true
		}
	}
	return false
}

func hashPart(storePath string) string {
	return strings.SplitN(filepath.Base(storePath), "-", 2)[0]
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// substituteAndCheck copies the closure of top from c into a fresh store
// that trusts only the cache's key, and checks every path of closure
// against the host's (local): its NarHash, and its tree byte for byte.
func substituteAndCheck(t *testing.T, c *cluster, top string, closure []string, local map[string]pathInfo) {
	t.Helper()
	store := filepath.Join(t.TempDir(), "store")
	mustNix(t, nixConfig("trusted-public-keys = "+c.publicKey), "nix", "copy", "--from", c.URL, "--to", store, top)
	copied := pathInfos(t, nixConfig(), "--store", store, "--recursive", top)
	for _, p := range closure {
		if copied[p].NarHash != local[p].NarHash {
			t.Errorf("%s: substituted NarHash %q, host %q", p, copied[p].NarHash, local[p].NarHash)
		}
		assertSameTree(t, p, filepath.Join(store, strings.TrimPrefix(p, "/")))
	}
}

// assertSameTree compares the NAR serialisations of two trees with the real
// nix-store --dump.
func assertSameTree(t *testing.T, want, got string) {
	t.Helper()
	dump := func(p string) []byte {
		out, err := exec.Command("nix-store", "--dump", p).Output()
		if err != nil {
			t.Fatalf("nix-store --dump %s: %v", p, err)
		}
		return out
	}
	if w, g := dump(want), dump(got); string(w) != string(g) {
		t.Errorf("%s and %s differ (%d vs %d NAR bytes)", want, got, len(w), len(g))
	}
}

// httpStatus performs a request and returns its status; body may be nil.
func httpStatus(t *testing.T, method, url, token string, body io.Reader) int {
	t.Helper()
	resp := httpDo(t, method, url, token, body, nil)
	return resp.status
}
