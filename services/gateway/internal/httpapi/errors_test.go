package httpapi

import (
	"net/http"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestUpstreamErrors(t *testing.T) {
	tests := []struct {
		code       codes.Code
		want       int
		retryAfter bool
	}{
		{codes.NotFound, 404, false},
		{codes.InvalidArgument, 400, false},
		{codes.FailedPrecondition, 400, false},
		{codes.AlreadyExists, 409, false},
		{codes.Aborted, 409, false},
		{codes.OutOfRange, 416, false},
		{codes.Unauthenticated, 401, false},
		{codes.PermissionDenied, 403, false},
		{codes.ResourceExhausted, 413, false},
		{codes.Unavailable, 503, true},
		{codes.DeadlineExceeded, 503, true},
		{codes.Unimplemented, 501, false},
		{codes.Internal, 500, false},
		{codes.Unknown, 500, false},
		{codes.DataLoss, 500, false},
	}
	e := newEnv(t)
	hash := hashPart("any")
	for _, tt := range tests {
		t.Run(tt.code.String(), func(t *testing.T) {
			msg := "index says " + tt.code.String()
			e.index.mu.Lock()
			e.index.err = status.Error(tt.code, msg)
			e.index.mu.Unlock()
			for _, req := range []request{
				{method: "GET", path: "/" + hash + ".narinfo"},
				{method: "PUT", path: "/" + hash + ".narinfo", body: []byte(pushedNarinfo(hash).String()), bearer: pushToken},
				{method: "GET", path: "/nar/" + sha256Hash(nil).NixBase32() + ".nar"},
				{method: "PUT", path: "/nar/" + sha256Hash(nil).NixBase32() + ".nar", body: []byte("nar"), bearer: pushToken},
			} {
				if tt.code == codes.AlreadyExists && strings.HasPrefix(req.path, "/nar/") {
					continue // the same NAR already stored: success (TestPutNar)
				}
				resp := e.do(t, req)
				if resp.code != tt.want {
					t.Errorf("%s %s: status %d, want %d", req.method, req.path, resp.code, tt.want)
				}
				if got := resp.header.Get("Retry-After") != ""; got != tt.retryAfter {
					t.Errorf("%s %s: Retry-After %q", req.method, req.path, resp.header.Get("Retry-After"))
				}
				if !strings.Contains(string(resp.body), msg) {
					t.Errorf("%s %s: body %q does not show %q", req.method, req.path, resp.body, msg)
				}
				if ct := resp.header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
					t.Errorf("%s %s: Content-Type %q", req.method, req.path, ct)
				}
			}
		})
	}
}

func TestPushAuth(t *testing.T) {
	hash := hashPart("pushed")
	narinfoBody := []byte(pushedNarinfo(hash).String())
	nar := []byte("nar bytes")
	narPath := "/nar/" + sha256Hash(nar).NixBase32() + ".nar"
	tests := []struct {
		name     string
		noTokens bool
		header   map[string]string
		code     int
		msg      string
	}{
		{name: "no credentials", code: 401, msg: "requires a token"},
		{name: "wrong bearer", header: map[string]string{"Authorization": "Bearer nope"}, code: 401, msg: "invalid token"},
		{name: "wrong basic", header: map[string]string{"Authorization": basic("nix", "nope")}, code: 401, msg: "invalid token"},
		{name: "empty basic password", header: map[string]string{"Authorization": basic("nix", "")}, code: 401, msg: "empty password"},
		{name: "other scheme", header: map[string]string{"Authorization": "Digest x"}, code: 401, msg: "scheme"},
		{name: "read-only token", header: map[string]string{"Authorization": "Bearer " + readToken}, code: 403, msg: "lacks the push scope"},
		{name: "bearer push token", header: map[string]string{"Authorization": "Bearer " + pushToken}, code: 204},
		{name: "basic push token, login ignored", header: map[string]string{"Authorization": basic("anything", pushToken)}, code: 204},
		{name: "no auth file", noTokens: true, header: map[string]string{"Authorization": "Bearer " + pushToken}, code: 401, msg: "push is disabled: no credentials are configured (-auth-file)"},
		{name: "no auth file, no credentials", noTokens: true, code: 401, msg: "push is disabled: no credentials are configured (-auth-file)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, func(c *Config) {
				if tt.noTokens {
					c.Auth.Tokens = nil
				}
			})
			for _, req := range []request{
				{method: "PUT", path: narPath, body: nar},
				{method: "PUT", path: "/" + hash + ".narinfo", body: narinfoBody},
				{method: "PUT", path: "/nix-cache-info", body: []byte("StoreDir: /nix/store\n")},
			} {
				req.header = tt.header
				resp := e.do(t, req)
				if resp.code != tt.code {
					t.Fatalf("PUT %s: status %d, want %d (body %q)", req.path, resp.code, tt.code, resp.body)
				}
				if !strings.Contains(string(resp.body), tt.msg) {
					t.Errorf("PUT %s: body %q does not contain %q", req.path, resp.body, tt.msg)
				}
				if got := resp.header.Get("WWW-Authenticate"); (resp.code == 401) != (got == `Basic realm="nixcache"`) {
					t.Errorf("PUT %s: status %d with WWW-Authenticate %q", req.path, resp.code, got)
				}
			}
			e.index.mu.Lock()
			defer e.index.mu.Unlock()
			reached := len(e.index.putNars) + len(e.index.putInfos)
			if (tt.code == 204) != (reached == 2) {
				t.Errorf("status %d, but the index got %d pushes", tt.code, reached)
			}
		})
	}
}

func basic(user, password string) string {
	r, _ := http.NewRequest("GET", "/", nil)
	r.SetBasicAuth(user, password)
	return r.Header.Get("Authorization")
}

// TestTokensNotLogged sends tokens every way a client can, and checks that
// no log line, even at debug level, shows one.
func TestTokensNotLogged(t *testing.T) {
	e := newEnv(t)
	hash := hashPart("pushed")
	const wrong = "wrong-secret-token-987654"
	for _, authz := range []string{
		"Bearer " + pushToken, "Bearer " + readToken, "Bearer " + wrong,
		basic("nix", pushToken), basic("nix", readToken), basic("nix", wrong),
	} {
		for _, req := range []request{
			{method: "PUT", path: "/" + hash + ".narinfo", body: []byte(pushedNarinfo(hash).String())},
			{method: "PUT", path: "/" + hash + ".narinfo", body: []byte("garbage\n")},
			{method: "GET", path: "/" + hash + ".narinfo"},
			{method: "PUT", path: "/log/x", body: []byte("log")},
		} {
			req.header = map[string]string{"Authorization": authz}
			e.do(t, req)
		}
	}
	logs := e.logs.String()
	if !strings.Contains(logs, "http request") {
		t.Fatalf("no access log lines:\n%s", logs)
	}
	for _, secret := range []string{pushToken, readToken, wrong, "cHVzaC1zZWNyZXQ", "d3JvbmctZ"} {
		if strings.Contains(logs, secret) {
			t.Errorf("logs contain the token %q:\n%s", secret, logs)
		}
	}
}

func TestPrivateReadsPolicy(t *testing.T) {
	// Reads go through the same policy, so private reads are one setting.
	e := newEnv(t, func(c *Config) { c.Auth.PublicRead = false })
	p := e.addPath("private-1.0", 10)
	tests := []struct {
		name   string
		bearer string
		code   int
	}{
		{"anonymous", "", 401},
		{"read token", readToken, 200},
		{"push-and-read token", pushToken, 200},
	}
	for _, tt := range tests {
		for _, path := range []string{"/nix-cache-info", "/" + p.hash + ".narinfo", "/nar/" + p.fileHash.NixBase32() + ".nar.xz"} {
			resp := e.do(t, request{method: "GET", path: path, bearer: tt.bearer})
			if resp.code != tt.code {
				t.Errorf("%s: GET %s: status %d, want %d", tt.name, path, resp.code, tt.code)
			}
		}
	}
}
