package httpapi

import (
	"net/http"
	"strings"
	"testing"
)

func TestCacheInfo(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Priority = 41 })
	const want = "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 41\n"
	tests := []struct {
		name   string
		req    request
		code   int
		body   string
		length string
		ctype  string
	}{
		{"get", request{method: "GET", path: "/nix-cache-info"}, 200, want, "51", "text/x-nix-cache-info"},
		{"head", request{method: "HEAD", path: "/nix-cache-info"}, 200, "", "51", "text/x-nix-cache-info"},
		{"put without credentials", request{method: "PUT", path: "/nix-cache-info", body: []byte(want)}, 401, "", "", ""},
		{"put with push token", request{method: "PUT", path: "/nix-cache-info", body: []byte(want), bearer: pushToken}, 204, "", "", ""},
		{"delete", request{method: "DELETE", path: "/nix-cache-info"}, 405, "", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := e.do(t, tt.req)
			if resp.code != tt.code {
				t.Fatalf("status %d, want %d (body %q)", resp.code, tt.code, resp.body)
			}
			if tt.body != "" && string(resp.body) != tt.body {
				t.Errorf("body %q, want %q", resp.body, tt.body)
			}
			if tt.req.method == "HEAD" && len(resp.body) != 0 {
				t.Errorf("HEAD answered a body %q", resp.body)
			}
			if tt.length != "" && resp.header.Get("Content-Length") != tt.length {
				t.Errorf("Content-Length %q, want %q", resp.header.Get("Content-Length"), tt.length)
			}
			if tt.ctype != "" && resp.header.Get("Content-Type") != tt.ctype {
				t.Errorf("Content-Type %q, want %q", resp.header.Get("Content-Type"), tt.ctype)
			}
		})
	}
}

func TestRouting(t *testing.T) {
	e := newEnv(t)
	hash := hashPart("x")
	tests := []struct {
		name  string
		req   request
		code  int
		allow string
		body  string // substring of the body
	}{
		{"post landing page", request{method: "POST", path: "/"}, 405, "GET, HEAD", ""},
		{"no admin API configured", request{method: "GET", path: "/api/v1/paths"}, 404, "", ""},
		{"no admin API configured, put", request{method: "PUT", path: "/api/v1/paths", bearer: pushToken}, 404, "", ""},
		{"unknown path", request{method: "GET", path: "/foo"}, 404, "", ""},
		{"delete narinfo", request{method: "DELETE", path: "/" + hash + ".narinfo"}, 405, "GET, HEAD, PUT", ""},
		{"post nar", request{method: "POST", path: "/nar/x.nar"}, 405, "GET, HEAD, PUT", ""},
		{"put log", request{method: "PUT", path: "/log/" + hash + "-x.drv", body: []byte("log"), bearer: pushToken}, 204, "", ""},
		{"put log not a drv", request{method: "PUT", path: "/log/" + hash + "-x", body: []byte("log"), bearer: pushToken}, 400, "", "bad build log URL"},
		{"put log bad encoding", request{method: "PUT", path: "/log/" + hash + "-x.drv", body: []byte("log"), bearer: pushToken, header: map[string]string{"Content-Encoding": "compress"}}, 415, "", "Content-Encoding"},
		{"get listing bad hash", request{method: "GET", path: "/x.ls"}, 400, "", "bad NAR listing URL"},
		{"put elsewhere", request{method: "PUT", path: "/x/y", body: []byte("x"), bearer: pushToken}, 501, "", "build logs"},
		{"put listing", request{method: "PUT", path: "/" + hash + ".ls", body: []byte("{}"), bearer: pushToken}, 204, "", ""},
		{"put realisation", request{method: "PUT", path: "/realisations/sha256:abc!out.doi", body: []byte("{}"), bearer: pushToken}, 204, "", ""},
		{"put debuginfo", request{method: "PUT", path: "/debuginfo/0123", body: []byte("{}"), bearer: pushToken}, 204, "", ""},
		{"put log needs push auth first", request{method: "PUT", path: "/log/x", body: []byte("log")}, 401, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := e.do(t, tt.req)
			if resp.code != tt.code {
				t.Fatalf("status %d, want %d (body %q)", resp.code, tt.code, resp.body)
			}
			if got := resp.header.Get("Allow"); got != tt.allow {
				t.Errorf("Allow %q, want %q", got, tt.allow)
			}
			if !strings.Contains(string(resp.body), tt.body) {
				t.Errorf("body %q does not contain %q", resp.body, tt.body)
			}
		})
	}
}

func TestRequestIDReachesIndex(t *testing.T) {
	e := newEnv(t)
	resp := e.do(t, request{method: "GET", path: "/" + hashPart("absent") + ".narinfo", header: map[string]string{"X-Request-Id": "req-42"}})
	if resp.code != http.StatusNotFound {
		t.Fatalf("status %d, want 404", resp.code)
	}
	if got := resp.header.Get("X-Request-Id"); got != "req-42" {
		t.Errorf("X-Request-Id answered %q, want req-42", got)
	}
	e.index.mu.Lock()
	got := e.index.requestID
	e.index.mu.Unlock()
	if got != "req-42" {
		t.Errorf("index saw request id %q, want req-42", got)
	}

	// Without one, the gateway makes one up and passes it on.
	resp = e.do(t, request{method: "GET", path: "/" + hashPart("absent") + ".narinfo", header: map[string]string{"X-Request-Id": "bad id with spaces"}})
	id := resp.header.Get("X-Request-Id")
	e.index.mu.Lock()
	got = e.index.requestID
	e.index.mu.Unlock()
	if id == "" || id == "bad id with spaces" || got != id {
		t.Errorf("generated id %q, index saw %q", id, got)
	}
}
