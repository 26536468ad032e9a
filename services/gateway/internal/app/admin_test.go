package app

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
)

// TestAdminAPIMounted checks that the JSON admin API is wired to the index
// connection: with the index down it answers 503 in JSON, with Retry-After.
func TestAdminAPIMounted(t *testing.T) {
	url, _ := start(t, options(t))
	resp, err := http.Get(url + "/api/v1/stats")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var st struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	}
	if err := json.Unmarshal(body, &st); err != nil {
		t.Fatalf("body %q is not a JSON status: %v", body, err)
	}
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" || st.Code != 14 {
		t.Errorf("status %d, Retry-After %q, body %s; want 503, Retry-After and code 14 (Unavailable)",
			resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
}

func TestRunPublicURL(t *testing.T) {
	for _, bad := range []string{"cache.example.org", "ftp://cache.example.org", "https://cache.example.org/?q=1"} {
		o := options(t)
		o.PublicURL = bad
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		err = Run(context.Background(), o, lis)
		lis.Close()
		if err == nil || !strings.Contains(err.Error(), "public url") {
			t.Errorf("Run with -public-url %q: %v, want a public url error", bad, err)
		}
	}
}
