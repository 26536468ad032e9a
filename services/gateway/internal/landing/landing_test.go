package landing

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/nixcache/nixcache/platform/grpcutil"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
)

const (
	activeKey  = "cache-2:BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB="
	retiredKey = "cache-1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
)

// fakeAdmin is the index's AdminService: the stats, and the signer's keys
// as the index lists them.
type fakeAdmin struct {
	indexv1.UnimplementedAdminServiceServer
	stats   *indexv1.GetStatsResponse
	keys    []*indexv1.KeyInfo
	err     error // of GetStats
	keysErr error // of ListKeys
	mu      sync.Mutex
	md      metadata.MD // of the last GetStats
	keysMD  metadata.MD // of the last ListKeys
}

func (f *fakeAdmin) GetStats(ctx context.Context, _ *indexv1.GetStatsRequest) (*indexv1.GetStatsResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	f.mu.Lock()
	f.md = md
	f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	return f.stats, nil
}

func (f *fakeAdmin) ListKeys(ctx context.Context, _ *indexv1.ListKeysRequest) (*indexv1.ListKeysResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	f.mu.Lock()
	f.keysMD = md
	err := f.keysErr
	f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return &indexv1.ListKeysResponse{Keys: f.keys}, nil
}

type env struct {
	admin *fakeAdmin
	conn  *grpc.ClientConn
	log   *slog.Logger
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{
		admin: &fakeAdmin{
			stats: &indexv1.GetStatsResponse{
				Paths: 12345, PushedPaths: 12000, LocalPaths: 345,
				NarBytes: 3 << 30, StoredBytes: 1536 << 20,
				NarinfoHits: 90, NarinfoMisses: 10,
			},
			keys: []*indexv1.KeyInfo{
				{Name: "cache-1", PublicKey: retiredKey},
				{Name: "cache-2", PublicKey: activeKey, Active: true},
			},
		},
		log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	lis := bufconn.Listen(1 << 20)
	gs := grpcutil.NewServer(e.log)
	indexv1.RegisterAdminServiceServer(gs.GRPC, e.admin)
	go gs.GRPC.Serve(lis)
	t.Cleanup(gs.GRPC.Stop)
	conn, err := grpcutil.Dial("passthrough:///bufnet", grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
		return lis.DialContext(ctx)
	}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	e.conn = conn
	return e
}

func (e *env) handler(t *testing.T, publicURL string) *Handler {
	t.Helper()
	h, err := New(Config{
		Admin:     indexv1.NewAdminServiceClient(e.conn),
		PublicURL: publicURL,
		Timeout:   5 * time.Second,
		Log:       e.log,
	})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func get(t *testing.T, h http.Handler, host string, header ...string) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequest("GET", "http://"+host+"/", nil)
	for i := 0; i+1 < len(header); i += 2 {
		r.Header.Set(header[i], header[i+1])
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func TestPage(t *testing.T) {
	tests := []struct {
		name      string
		publicURL string
		host      string
		signerErr error
		adminErr  error
		want      []string // substrings of the page
		dontWant  []string
	}{
		{
			name: "everything up", host: "cache.local:5000",
			want: []string{
				"substituters = http://cache.local:5000\ntrusted-public-keys = " + activeKey + "</code>",
				retiredKey, // listed, as retired
				`<span class="badge off">retired</span>`,
				"machine cache.local login nixcache password &lt;your push token&gt;",
				"nix copy --to 'http://cache.local:5000?compression=zstd' ./result",
				`id="stat-paths">12,345</span>`,
				`id="stat-nar-bytes">3.0 GiB</span>`,
				`id="stat-stored-bytes">1.5 GiB</span>`,
				`id="stat-hits">90</span>`,
				`id="stat-misses">10</span>`,
				"90.0%",
				"Signer up", "Index up",
			},
			dontWant: []string{"unavailable", "trusted-public-keys = " + activeKey + " " + retiredKey},
		},
		{
			name: "public url", publicURL: "https://cache.example.org/nix/", host: "10.0.0.1:5000",
			want: []string{
				"substituters = https://cache.example.org/nix\n",
				"machine cache.example.org login nixcache",
				"nix store ping --store 'https://cache.example.org/nix'",
			},
			dontWant: []string{"10.0.0.1"},
		},
		{
			name: "signer down", host: "cache.local", signerErr: status.Error(codes.Unavailable, "connection refused"),
			want: []string{
				"Public keys unavailable: the signer (asked through the index) is not answering.",
				"trusted-public-keys = &lt;the cache&#39;s public key&gt;",
				"Signer unavailable", "Index up", `id="stat-paths">12,345</span>`,
			},
		},
		{
			name: "index without stats", host: "cache.local", adminErr: status.Error(codes.Unimplemented, "unknown method GetStats"),
			want:     []string{"Statistics unavailable: the index does not report them.", "Index up", activeKey},
			dontWant: []string{`data-stat="paths"`},
		},
		{
			name: "private reads", host: "cache.local", adminErr: status.Error(codes.Unauthenticated, "read requires a token"),
			want: []string{"Statistics unavailable: reading this cache needs a token."},
		},
		{
			name: "both down", host: "cache.local",
			signerErr: status.Error(codes.Unavailable, "down"), adminErr: status.Error(codes.Unavailable, "down"),
			want: []string{"Public keys unavailable", "Statistics unavailable: the index is not answering.", "Signer unavailable", "Index unavailable"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			e.admin.keysErr, e.admin.err = tt.signerErr, tt.adminErr
			w := get(t, e.handler(t, tt.publicURL), tt.host)
			body := w.Body.String()
			if w.Code != http.StatusOK {
				t.Fatalf("status %d, body %s", w.Code, body)
			}
			if ct := w.Header().Get("Content-Type"); ct != "text/html; charset=utf-8" {
				t.Errorf("Content-Type %q", ct)
			}
			for _, s := range tt.want {
				if !strings.Contains(body, s) {
					t.Errorf("page lacks %q", s)
				}
			}
			for _, s := range tt.dontWant {
				if strings.Contains(body, s) {
					t.Errorf("page has %q", s)
				}
			}
			if t.Failed() {
				t.Logf("page:\n%s", body)
			}
		})
	}
}

// TestPageEscapes feeds hostile values from the signer and the request
// and checks none reaches the page as markup.
func TestPageEscapes(t *testing.T) {
	e := newEnv(t)
	e.admin.keys = []*indexv1.KeyInfo{{
		Name:      `k"><script>alert(1)</script>`,
		PublicKey: `k:<img src=x onerror=alert(2)>'"`,
		Active:    true,
	}}
	w := get(t, e.handler(t, ""), `cache.local'"><b>x`)
	body := w.Body.String()
	for _, bad := range []string{"<script>alert", "<img", "<b>x", `'"><b>`} {
		if strings.Contains(body, bad) {
			t.Errorf("page contains %q unescaped", bad)
		}
	}
	for _, good := range []string{"&lt;script&gt;alert(1)&lt;/script&gt;", "k:&lt;img src=x onerror=alert(2)&gt;&#39;&#34;"} {
		if !strings.Contains(body, good) {
			t.Errorf("page lacks the escaped %q", good)
		}
	}
	if n := strings.Count(body, "<script"); n != 1 {
		t.Errorf("page has %d script elements, want 1", n)
	}
}

// TestContentSecurityPolicy checks that the policy allows exactly the
// page's inline style and script, as rendered.
func TestContentSecurityPolicy(t *testing.T) {
	e := newEnv(t)
	w := get(t, e.handler(t, ""), "cache.local")
	csp := w.Header().Get("Content-Security-Policy")
	body := w.Body.String()
	for _, el := range []struct{ tag, directive string }{{"style", "style-src"}, {"script", "script-src"}} {
		m := regexp.MustCompile(`(?s)<` + el.tag + `>(.*?)</` + el.tag + `>`).FindStringSubmatch(body)
		if m == nil {
			t.Fatalf("no <%s> in the page", el.tag)
		}
		sum := sha256.Sum256([]byte(m[1]))
		want := el.directive + " 'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
		if !strings.Contains(csp, want) {
			t.Errorf("policy %q lacks %q", csp, want)
		}
	}
	if !strings.Contains(csp, "default-src 'none'") || !strings.Contains(csp, "connect-src 'self'") {
		t.Errorf("policy %q", csp)
	}
}

// TestCredentials checks that the caller's Authorization goes to the index
// for the stats and the keys.
func TestCredentials(t *testing.T) {
	e := newEnv(t)
	get(t, e.handler(t, ""), "cache.local", "Authorization", "Bearer read-token")
	if got := e.admin.md.Get("authorization"); len(got) != 1 || got[0] != "Bearer read-token" {
		t.Errorf("index got authorization %q for the stats", got)
	}
	if got := e.admin.keysMD.Get("authorization"); len(got) != 1 || got[0] != "Bearer read-token" {
		t.Errorf("index got authorization %q for the keys", got)
	}
}

func TestHead(t *testing.T) {
	e := newEnv(t)
	srv := httptest.NewServer(e.handler(t, ""))
	defer srv.Close()
	resp, err := http.Head(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || len(b) != 0 || resp.ContentLength <= 0 {
		t.Errorf("HEAD: status %d, %d body bytes, Content-Length %d", resp.StatusCode, len(b), resp.ContentLength)
	}
}

func TestNew(t *testing.T) {
	e := newEnv(t)
	admin := indexv1.NewAdminServiceClient(e.conn)
	for _, c := range []Config{
		{Timeout: time.Second, Log: e.log},
		{Admin: admin, Log: e.log},
		{Admin: admin, Timeout: time.Second},
		{Admin: admin, Timeout: time.Second, Log: e.log, PublicURL: "cache.example.org"},
		{Admin: admin, Timeout: time.Second, Log: e.log, PublicURL: "ftp://cache.example.org"},
		{Admin: admin, Timeout: time.Second, Log: e.log, PublicURL: "https://cache.example.org/?x=1"},
		{Admin: admin, Timeout: time.Second, Log: e.log, PublicURL: "https://user@cache.example.org"},
	} {
		if _, err := New(c); err == nil {
			t.Errorf("New(%+v) succeeded", c)
		}
	}
}

func TestFormat(t *testing.T) {
	for _, tt := range []struct {
		n            uint64
		bytes, count string
	}{
		{0, "0 B", "0"},
		{1023, "1023 B", "1,023"},
		{1024, "1.0 KiB", "1,024"},
		{1536 << 20, "1.5 GiB", "1,610,612,736"},
		{1 << 60, "1.0 EiB", "1,152,921,504,606,846,976"},
		{^uint64(0), "16.0 EiB", "18,446,744,073,709,551,615"},
	} {
		if got := formatBytes(tt.n); got != tt.bytes {
			t.Errorf("formatBytes(%d) = %q, want %q", tt.n, got, tt.bytes)
		}
		if got := formatCount(tt.n); got != tt.count {
			t.Errorf("formatCount(%d) = %q, want %q", tt.n, got, tt.count)
		}
	}
	if got := formatRatio(0, 0); got != "–" {
		t.Errorf("formatRatio(0, 0) = %q", got)
	}
	if got := formatRatio(1, 2); got != "33.3%" {
		t.Errorf("formatRatio(1, 2) = %q", got)
	}
}

// TestKeysAsLastListed: while the index does not answer, the page shows
// the keys it listed last; a refusal (private reads) shows none.
func TestKeysAsLastListed(t *testing.T) {
	e := newEnv(t)
	h := e.handler(t, "")
	if body := get(t, h, "cache.local").Body.String(); !strings.Contains(body, activeKey) {
		t.Fatalf("first page lacks the key:\n%s", body)
	}
	e.admin.mu.Lock()
	e.admin.keysErr = status.Error(codes.Unavailable, "down")
	e.admin.mu.Unlock()
	body := get(t, h, "cache.local").Body.String()
	if !strings.Contains(body, "trusted-public-keys = "+activeKey) || !strings.Contains(body, "Signer unavailable") {
		t.Errorf("index down: the page lacks the last listed key or the signer's state:\n%s", body)
	}
	e.admin.mu.Lock()
	e.admin.keysErr = status.Error(codes.Unauthenticated, "read requires a token")
	e.admin.mu.Unlock()
	if body := get(t, h, "cache.local").Body.String(); strings.Contains(body, activeKey) {
		t.Errorf("refused: the page shows the key:\n%s", body)
	}
}
