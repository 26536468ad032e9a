package e2e

import (
	"bytes"
	"encoding/json"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// revokeBound is the documented bound (docs/tokens.md) on how long a
// revoked or expired token may still be accepted, by the index and by
// every gateway.
const revokeBound = time.Second

// createdToken is what CreateToken answers, as grpcurl prints it.
type createdToken struct {
	Token struct {
		Name      string   `json:"name"`
		Scopes    []string `json:"scopes"`
		CreatedBy string   `json:"createdBy"`
		Expires   string   `json:"expires"`
	} `json:"token"`
	Secret string `json:"secret"`
}

// createToken makes a token with grpcurl, as docs/tokens.md shows it,
// with the operator's token; data is the request.
func (c *cluster) createToken(data string) createdToken {
	c.t.Helper()
	out := c.admin("CreateToken", data)
	var ct createdToken
	if err := json.Unmarshal([]byte(out), &ct); err != nil || len(ct.Secret) != 64 {
		c.t.Fatalf("CreateToken %s: %v\n%s", data, err, out)
	}
	return ct
}

// listedToken is one token of ListTokens through the JSON API.
type listedToken struct {
	Name     string   `json:"name"`
	Scopes   []string `json:"scopes"`
	Source   string   `json:"source"`
	Created  *string  `json:"created"`
	Expires  *string  `json:"expires"`
	LastUsed *string  `json:"last_used"`
}

// listTokens lists the tokens through the gateway's JSON API.
func listTokens(t *testing.T, gateway, adminToken string) map[string]listedToken {
	t.Helper()
	r := httpDo(t, "GET", gateway+"/api/v1/tokens", adminToken, nil, nil)
	if r.status != http.StatusOK {
		t.Fatalf("GET /api/v1/tokens: %d %s", r.status, r.body)
	}
	var resp struct {
		Tokens []listedToken `json:"tokens"`
	}
	if err := json.Unmarshal([]byte(r.body), &resp); err != nil {
		t.Fatalf("GET /api/v1/tokens: %v\n%s", err, r.body)
	}
	byName := map[string]listedToken{}
	for _, tok := range resp.Tokens {
		byName[tok.Name] = tok
	}
	return byName
}

// putCacheInfo is the smallest push request: PUT /nix-cache-info (push
// scope); it returns the status.
func putCacheInfo(t *testing.T, gateway, token string) int {
	t.Helper()
	return httpStatus(t, "PUT", gateway+"/nix-cache-info", token, strings.NewReader("StoreDir: /nix/store\n"))
}

// refusedWithin polls until every gateway answers a push with token
// with want, and returns how long the slowest took; it fails the test
// after bound.
func refusedWithin(t *testing.T, gateways []string, token string, want int, bound time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	pending := append([]string(nil), gateways...)
	for len(pending) > 0 {
		var still []string
		for _, g := range pending {
			if code := putCacheInfo(t, g, token); code != want {
				still = append(still, g)
			}
		}
		pending = still
		if len(pending) > 0 && time.Since(start) > bound {
			t.Fatalf("%v still answer a push with the token %v later, want %d within %v", pending, time.Since(start), want, bound)
		}
		if len(pending) > 0 {
			time.Sleep(5 * time.Millisecond)
		}
	}
	return time.Since(start)
}

// assertNoSecret fails if any file under dir (catalog.db included, byte
// for byte) holds one of the secrets.
func assertNoSecret(t *testing.T, dir string, secrets ...string) {
	t.Helper()
	files := 0
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		files++
		for _, s := range secrets {
			if bytes.Contains(b, []byte(s)) {
				t.Errorf("%s holds a token's secret in clear", path)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files == 0 {
		t.Fatalf("no files under %s: nothing was checked", dir)
	}
}

// TestTokens: a token made with grpcurl pushes with the real Nix; it is
// listed with its last use and counted in the metrics; a push token
// cannot make tokens; an expired token is refused; tokens, their last
// uses and expiries survive a restart of the index and the gateway; a
// revoked token is refused within the bound; a token that cannot be
// checked (index down) is refused with 503, the gateway's own file
// tokens still work; no secret is ever in the data directory or a log.
func TestTokens(t *testing.T) {
	c := newCluster(t)
	ci := c.createToken(`{"name": "ci", "scopes": ["push", "read"], "description": "the CI"}`)
	if ci.Token.CreatedBy != "operator" || strings.Join(ci.Token.Scopes, ",") != "read,push" {
		t.Errorf("CreateToken: %+v, want created by operator with read,push", ci.Token)
	}
	short := c.createToken(`{"name": "short", "scopes": ["push", "admin"], "expires_in": "5s"}`)
	expires, err := time.Parse(time.RFC3339Nano, short.Token.Expires)
	if err != nil {
		t.Fatalf("CreateToken: expires %q: %v", short.Token.Expires, err)
	}
	if code := putCacheInfo(t, c.URL, short.Secret); code != http.StatusNoContent && time.Now().Before(expires) {
		t.Errorf("push with the short token before its expiry: %d", code)
	}

	// Create → push works.
	top, closure := buildClosure(t)
	mustNix(t, nixConfig("netrc-file = "+c.netrc(ci.Secret)), "nix", "copy", "--to", c.URL, top)
	substituteAndCheck(t, c, top, closure, pathInfos(t, nixConfig(), "--recursive", top))

	// Listed, with its last use; the file's tokens are listed read-only.
	toks := listTokens(t, c.URL, c.adminToken)
	if tok := toks["ci"]; tok.Source != "TOKEN_SOURCE_CATALOG" || tok.LastUsed == nil || tok.Created == nil {
		t.Errorf("ListTokens: ci = %+v, want a catalogue token with created and last_used", tok)
	}
	if tok := toks["pusher"]; tok.Source != "TOKEN_SOURCE_FILE" {
		t.Errorf("ListTokens: pusher = %+v, want a file token", tok)
	}
	if tok := toks["short"]; tok.Expires == nil || tok.LastUsed == nil {
		t.Errorf("ListTokens: short = %+v, want an expiry and a use", tok)
	}
	// And in the metrics of both services.
	if n := metric(t, c.URL+"/metrics", `nixcache_token_requests_total{token="ci"}`); n < float64(len(closure)) {
		t.Errorf("gateway: nixcache_token_requests_total{token=\"ci\"} = %v, want at least %d (one narinfo PUT a path)", n, len(closure))
	}
	if n := metric(t, "http://"+c.indexMetrics+"/metrics", `nixcache_token_checks_total{result="ok",token="ci"}`); n < 1 {
		t.Errorf("index: nixcache_token_checks_total for ci = %v, want at least 1", n)
	}

	// Admin scope required: a push token makes no token, on gRPC or JSON.
	if _, errOut, err := c.grpcurl(ci.Secret, `{"name": "x", "scopes": ["admin"]}`, "nixcache.index.v1.AdminService/CreateToken"); err == nil || !strings.Contains(errOut, "PermissionDenied") {
		t.Errorf("CreateToken with a push token: %v %s, want PermissionDenied", err, errOut)
	}
	if r := httpDo(t, "POST", c.URL+"/api/v1/tokens", ci.Secret, strings.NewReader(`{"name": "x", "scopes": ["admin"]}`), nil); r.status != http.StatusForbidden {
		t.Errorf("POST /api/v1/tokens with a push token: %d %s, want 403", r.status, r.body)
	}
	if r := httpDo(t, "POST", c.URL+"/api/v1/tokens", c.adminToken, strings.NewReader(`{"name": "ci", "scopes": ["read"]}`), nil); r.status != http.StatusConflict {
		t.Errorf("POST /api/v1/tokens with a name in use: %d %s, want 409", r.status, r.body)
	}
	if r := httpDo(t, "POST", c.URL+"/api/v1/tokens", c.adminToken, strings.NewReader(`{"name": "bad name", "scopes": ["read"]}`), nil); r.status != http.StatusBadRequest {
		t.Errorf("POST /api/v1/tokens with a bad name: %d %s, want 400", r.status, r.body)
	}

	// Expiry, on the gateway (push) and the index (admin): accepted until
	// it expires, refused within the bound after.
	for {
		code := putCacheInfo(t, c.URL, short.Secret)
		now := time.Now()
		if code == http.StatusUnauthorized {
			if now.Before(expires) {
				t.Fatalf("the short token was refused %v before its expiry", expires.Sub(now))
			}
			t.Logf("expired token refused %v after its expiry", now.Sub(expires).Round(time.Millisecond))
			break
		}
		if code != http.StatusNoContent || now.After(expires.Add(revokeBound)) {
			t.Fatalf("push with the short token %v after its expiry: %d, want 401 within %v", now.Sub(expires), code, revokeBound)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if r := httpDo(t, "GET", c.URL+"/api/v1/tokens", short.Secret, nil, nil); r.status != http.StatusUnauthorized || !strings.Contains(r.body, "expired") {
		t.Errorf("admin call with the expired token: %d %s, want 401 saying it expired", r.status, r.body)
	}

	// Restart keeps everything: the token pushes again, its last use,
	// the expired token still listed and still refused.
	before := listTokens(t, c.URL, c.adminToken)
	c.stop("gateway")
	c.stop("index")
	c.start("index")
	c.start("gateway")
	after := listTokens(t, c.URL, c.adminToken)
	for _, name := range []string{"ci", "short"} {
		b, a := before[name], after[name]
		if a.Created == nil || *a.Created != *b.Created || (b.LastUsed == nil) != (a.LastUsed == nil) ||
			b.LastUsed != nil && *a.LastUsed != *b.LastUsed {
			t.Errorf("token %s before the restart %+v, after %+v", name, b, a)
		}
	}
	if code := putCacheInfo(t, c.URL, short.Secret); code != http.StatusUnauthorized {
		t.Errorf("push with the expired token after a restart: %d, want 401", code)
	}
	top2, closure2 := buildClosure(t)
	mustNix(t, nixConfig("netrc-file = "+c.netrc(ci.Secret)), "nix", "copy", "--to", c.URL, top2)
	substituteAndCheck(t, c, top2, closure2, pathInfos(t, nixConfig(), "--recursive", top2))

	// Revoke through the JSON API: refused within the bound.
	if r := httpDo(t, "DELETE", c.URL+"/api/v1/tokens/ci", c.adminToken, nil, nil); r.status != http.StatusOK {
		t.Fatalf("DELETE /api/v1/tokens/ci: %d %s", r.status, r.body)
	}
	d := refusedWithin(t, []string{c.URL}, ci.Secret, http.StatusUnauthorized, revokeBound)
	t.Logf("revoked token refused after %v (bound %v)", d.Round(time.Millisecond), revokeBound)
	if _, ok := listTokens(t, c.URL, c.adminToken)["ci"]; ok {
		t.Error("ci is still listed after its revocation")
	}
	if r := httpDo(t, "DELETE", c.URL+"/api/v1/tokens/pusher", c.adminToken, nil, nil); r.status != http.StatusBadRequest {
		t.Errorf("DELETE of a file token: %d %s, want 400 (edit the file)", r.status, r.body)
	}

	// A token the gateway cannot check is refused (503); its own file's
	// tokens still work.
	other := c.createToken(`{"name": "other", "scopes": ["push"]}`)
	c.stop("index")
	d = refusedWithin(t, []string{c.URL}, other.Secret, http.StatusServiceUnavailable, revokeBound)
	t.Logf("with the index down, a catalogue token is refused with 503 after %v", d.Round(time.Millisecond))
	if code := putCacheInfo(t, c.URL, c.pushToken); code != http.StatusNoContent {
		t.Errorf("push with the gateway's file token while the index is down: %d, want 204", code)
	}
	c.start("index")

	// The secrets are nowhere on disk or in a log.
	c.stop("gateway")
	c.stop("index")
	secrets := []string{ci.Secret, short.Secret, other.Secret}
	assertNoSecret(t, filepath.Join(c.dir, "index"), secrets...)
	assertNoSecret(t, filepath.Join(c.dir, "logs"), secrets...)
	if _, err := os.Stat(filepath.Join(c.dir, "index", "catalog.db")); err != nil {
		t.Fatalf("no catalogue was checked: %v", err)
	}
}

// TestTokenRevokedOnEveryGateway: two gateways that follow the index's
// changes, each holding the token's answer in its cache (kept 10 s
// while in sync), both refuse the token within the bound of its
// revocation through one of them: the TOKENS_CHANGED event, not the
// cache's expiry, drops it.
func TestTokenRevokedOnEveryGateway(t *testing.T) {
	c := newCluster(t, withArgs("gateway", cachingGateway...))
	a := c.URL
	b := c.startGateway("gateway-b", cachingGateway...)
	for _, g := range []string{a, b} {
		waitMetric(t, g, "nixcache_index_watch_up", 1, 10*time.Second)
	}
	ci := c.createToken(`{"name": "ci", "scopes": ["push"]}`)
	const cached = `nixcache_token_lookups_total{result="cached"}`
	for _, g := range []string{a, b} {
		for range 2 {
			if code := putCacheInfo(t, g, ci.Secret); code != http.StatusNoContent {
				t.Fatalf("push through %s: %d", g, code)
			}
		}
		if n := metric(t, g+"/metrics", cached); n < 1 {
			t.Fatalf("%s: %s = %v: the token's answer is not cached, the test would not show the event at work", g, cached, n)
		}
	}
	if r := httpDo(t, "DELETE", a+"/api/v1/tokens/ci", c.adminToken, nil, nil); r.status != http.StatusOK {
		t.Fatalf("DELETE /api/v1/tokens/ci through A: %d %s", r.status, r.body)
	}
	d := refusedWithin(t, []string{a, b}, ci.Secret, http.StatusUnauthorized, revokeBound)
	t.Logf("revoked through A: both gateways refuse the token after %v (bound %v)", d.Round(time.Millisecond), revokeBound)
	if n := metric(t, "http://"+c.indexMetrics+"/metrics", "nixcache_watch_token_events_total"); n != 2 {
		t.Errorf("nixcache_watch_token_events_total = %v, want 2 (a creation, a revocation)", n)
	}

	// A new token works at once on both (refusals are not cached).
	next := c.createToken(`{"name": "next", "scopes": ["push"]}`)
	for _, g := range []string{a, b} {
		if code := putCacheInfo(t, g, next.Secret); code != http.StatusNoContent {
			t.Errorf("push with a new token through %s: %d", g, code)
		}
	}
}

// TestTokenRevokedDuringPush: a token revoked while the real Nix pushes a
// large path with it: the upload under way may finish, the next request
// is refused (401), the push fails, and nothing of it is served (its
// narinfo is 404). The same closure then pushes with another token. With
// a gateway that asks the index on every request (no watch), and with
// one that keeps the token's answer while its watch is in sync (as
// deployed), which the revocation's event must drop.
func TestTokenRevokedDuringPush(t *testing.T) {
	t.Run("no watch", func(t *testing.T) { testTokenRevokedDuringPush(t, newCluster(t)) })
	t.Run("watch", func(t *testing.T) {
		c := newCluster(t, withArgs("gateway", cachingGateway...))
		waitMetric(t, c.URL, "nixcache_index_watch_up", 1, 10*time.Second)
		testTokenRevokedDuringPush(t, c)
	})
}

func testTokenRevokedDuringPush(t *testing.T, c *cluster) {
	ci := c.createToken(`{"name": "ci", "scopes": ["push", "read"]}`)
	seed := "revoked-push-" + randomHex(t, 4)
	top := strings.TrimSpace(mustNix(t, nixConfig(), "nix-build", "testdata/closure.nix",
		"--argstr", "seed", seed, "--arg", "randomBytes", "134217728", "--no-out-link"))
	closure := strings.Fields(mustNix(t, nixConfig(), "nix-store", "--query", "--requisites", top))
	leaf := pathNamed(t, closure, "leaf-")

	// compression=none: the 128 MiB leaf goes up as one long PUT.
	push := startNix(t, nixConfig("netrc-file = "+c.netrc(ci.Secret)), "nix", "copy", "--to", c.URL+"?compression=none", top)
	const uploading = `grpc_server_in_flight{grpc_method="PutNar",grpc_service="nixcache.index.v1.IndexService",grpc_type="client_stream"}`
	waitFor(t, 60*time.Second, "the leaf's NAR upload", func() bool {
		return metric(t, "http://"+c.indexMetrics+"/metrics", uploading) >= 1
	})
	if r := httpDo(t, "DELETE", c.URL+"/api/v1/tokens/ci", c.adminToken, nil, nil); r.status != http.StatusOK {
		t.Fatalf("DELETE /api/v1/tokens/ci: %d %s", r.status, r.body)
	}
	revoked := time.Now()
	var err error
	select {
	case err = <-push.done:
		push.done <- err
	case <-time.After(120 * time.Second):
		t.Fatal("nix copy did not end within 120 s of the revocation")
	}
	if err == nil {
		t.Fatalf("nix copy succeeded although its token was revoked during the push\n%s", push.stderr.String())
	}
	if !strings.Contains(push.stderr.String(), "401") {
		t.Errorf("nix copy failed without a 401:\n%s", push.stderr.String())
	}
	t.Logf("nix copy failed %v after the revocation", time.Since(revoked).Round(time.Millisecond))
	for _, p := range closure {
		if code := httpStatus(t, "GET", c.URL+"/"+hashPart(p)+".narinfo", "", nil); code != http.StatusNotFound {
			t.Errorf("%s: narinfo %d after a refused push, want 404", p, code)
		}
	}
	if n := metric(t, c.URL+"/metrics", `nixcache_http_requests_total{code="401",method="PUT",route="narinfo"}`); n < 1 {
		t.Logf("note: no narinfo PUT was refused (the push stopped earlier)")
	}

	// Nothing was damaged: the closure pushes with a valid token and
	// substitutes whole.
	mustNix(t, nixConfig("netrc-file = "+c.netrc(c.pushToken)), "nix", "copy", "--to", c.URL+"?compression=none", top)
	if code := httpStatus(t, "GET", c.URL+"/"+hashPart(leaf)+".narinfo", "", nil); code != http.StatusOK {
		t.Fatalf("leaf narinfo %d after the second push", code)
	}
	substituteAndCheck(t, c, top, closure, pathInfos(t, nixConfig(), "--recursive", top))
}
