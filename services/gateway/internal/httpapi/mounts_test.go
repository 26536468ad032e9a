package httpapi

import (
	"io"
	"net/http"
	"testing"
)

// TestMounts checks that / and /api/v1/... reach the handlers mounted
// there, and nothing else does.
func TestMounts(t *testing.T) {
	mounted := func(name string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Mounted", name)
			io.WriteString(w, name+" "+r.Method+" "+r.URL.Path)
		})
	}
	e := newEnv(t, func(c *Config) {
		c.Landing = mounted("landing")
		c.Admin = mounted("admin")
	})
	tests := []struct {
		method, path string
		code         int
		mounted      string // "" when neither
	}{
		{"GET", "/", 200, "landing"},
		{"HEAD", "/", 200, "landing"},
		{"POST", "/", 405, ""},
		{"GET", "/api/v1/stats", 200, "admin"},
		{"DELETE", "/api/v1/paths/x", 200, "admin"},
		{"POST", "/api/v1/gc", 200, "admin"},
		{"GET", "/api/v1", 200, "admin"},
		{"GET", "/api/v10", 404, ""},
		{"GET", "/api/v2/stats", 404, ""},
		{"GET", "/index.html", 404, ""},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			resp := e.do(t, request{method: tt.method, path: tt.path})
			if resp.code != tt.code || resp.header.Get("X-Mounted") != tt.mounted {
				t.Errorf("status %d from %q, want %d from %q (body %q)",
					resp.code, resp.header.Get("X-Mounted"), tt.code, tt.mounted, resp.body)
			}
			if resp.header.Get("X-Request-Id") == "" {
				t.Error("no X-Request-Id")
			}
		})
	}
}
