package cacheclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func newClient(t *testing.T, url string, retries int) *Client {
	t.Helper()
	c, err := New(Config{URL: url, Token: "tok", Retries: retries, MinBackoff: time.Millisecond, MaxBackoff: 20 * time.Millisecond,
		Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestRetries(t *testing.T) {
	tests := []struct {
		name     string
		statuses []int // answered in turn; the last repeats
		retries  int
		wantErr  string
		wantHits int32
	}{
		{"503 then success", []int{503, 503, 204}, 5, "", 3},
		{"429 and 502 and 504 pass", []int{429, 502, 504, 204}, 5, "", 4},
		{"retries spent", []int{503}, 2, "503 Service Unavailable", 3},
		{"400 is not retried", []int{400, 204}, 5, "400 Bad Request", 1},
		{"401 says what to check", []int{401, 204}, 5, "check the netrc entry", 1},
		{"500 is not retried", []int{500, 204}, 5, "500", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var hits atomic.Int32
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				n := int(hits.Add(1)) - 1
				body, _ := io.ReadAll(r.Body)
				if string(body) != "narbytes" || r.Header.Get("Authorization") != "Bearer tok" || r.URL.Path != "/prefix/nar/x.nar" {
					t.Errorf("request %d: body %q, auth %q, path %q", n, body, r.Header.Get("Authorization"), r.URL.Path)
				}
				code := tt.statuses[min(n, len(tt.statuses)-1)]
				if code == 503 {
					w.Header().Set("Retry-After", "0")
				}
				w.WriteHeader(code)
				io.WriteString(w, "told you")
			}))
			defer srv.Close()
			c := newClient(t, srv.URL+"/prefix/", tt.retries)
			err := c.PutNar(context.Background(), "nar/x.nar", BytesBody([]byte("narbytes")), 8)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("err = %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("err = %v, want one saying %q", err, tt.wantErr)
			}
			if got := hits.Load(); got != tt.wantHits {
				t.Errorf("%d requests, want %d", got, tt.wantHits)
			}
		})
	}
}

func TestConnectionLossRetried(t *testing.T) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hits.Add(1) == 1 {
			// Cut the connection without an answer.
			conn, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				conn.Close()
			}
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	defer srv.Close()
	c := newClient(t, srv.URL, 3)
	if err := c.PutNarinfo(context.Background(), "0123456789abcdfghijklmnpqrsvwxyz", "StorePath: x\n"); err != nil {
		t.Fatalf("PutNarinfo after a cut connection: %v", err)
	}
	if got := hits.Load(); got != 2 {
		t.Errorf("%d requests, want 2", got)
	}
}

func TestMissing(t *testing.T) {
	var calls atomic.Int32
	answer := `{"missing": ["/nix/store/b"]}`
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		if r.Method != http.MethodPost || r.URL.Path != "/api/v1/missing-paths" {
			t.Errorf("%s %s", r.Method, r.URL.Path)
		}
		io.WriteString(w, answer)
	}))
	defer srv.Close()
	c := newClient(t, srv.URL, 0)
	got, err := c.Missing(context.Background(), []string{"/nix/store/a", "/nix/store/b"})
	if err != nil || len(got) != 1 || got[0] != "/nix/store/b" {
		t.Errorf("Missing = %q, %v", got, err)
	}
	// A cache that answers about paths not asked about is not believed.
	answer = `{"missing": ["/nix/store/evil"]}`
	if _, err := c.Missing(context.Background(), []string{"/nix/store/a"}); err == nil {
		t.Error("an answer naming a path not asked about was taken")
	}
	// Large sets go in batches.
	calls.Store(0)
	answer = `{"missing": []}`
	many := make([]string, MaxPathsPerQuery+1)
	for i := range many {
		many[i] = "/nix/store/p"
	}
	if _, err := c.Missing(context.Background(), many); err != nil {
		t.Fatal(err)
	}
	if got := calls.Load(); got != 2 {
		t.Errorf("%d requests for %d paths, want 2", got, len(many))
	}
}

func TestContextEndsRetries(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "3600")
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	c, err := New(Config{URL: srv.URL, Retries: 100, MaxBackoff: time.Hour, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = c.PutNarinfo(ctx, "0123456789abcdfghijklmnpqrsvwxyz", "x")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want the context's", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("took %s after the context ended", d)
	}
}

func TestIsRefusal(t *testing.T) {
	for status, want := range map[int]bool{400: true, 404: true, 413: true, 401: false, 403: false, 408: false, 429: false, 500: false, 503: false} {
		err := fmt.Errorf("push: %w", &Error{Method: "PUT", Path: "/x.narinfo", Status: status})
		if got := IsRefusal(err); got != want {
			t.Errorf("IsRefusal(%d) = %v, want %v", status, got, want)
		}
	}
	if IsRefusal(errors.New("connection refused")) {
		t.Error("a connection failure is a refusal")
	}
}

// TestMayRefuseSome: a 403 (a token limited to some names) sends the
// queue's paths one by one, as a refusal does; a 401 does not.
func TestMayRefuseSome(t *testing.T) {
	for status, want := range map[int]bool{400: true, 403: true, 401: false, 429: false, 503: false} {
		err := fmt.Errorf("push: %w", &Error{Method: "PUT", Path: "/x.narinfo", Status: status})
		if got := MayRefuseSome(err); got != want {
			t.Errorf("MayRefuseSome(%d) = %v, want %v", status, got, want)
		}
	}
}
