package tokens

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/nixcache/nixcache/platform/auth"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/catalog"
	"github.com/nixcache/nixcache/services/index/internal/fault"
)

func newStore(t *testing.T, path string) (*Store, *catalog.Catalog) {
	t.Helper()
	cat, err := catalog.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cat.Close() })
	file, err := auth.ParseTokens(strings.NewReader("boot admin boottok\n"), "test")
	if err != nil {
		t.Fatal(err)
	}
	return New(cat, file, slog.New(slog.NewTextHandler(io.Discard, nil))), cat
}

// TestLifecycle: create, check (with expiry), list with last uses
// (pending and flushed), revoke; the catalogue file never holds a secret;
// the catalogue's watchers hear of each change.
func TestLifecycle(t *testing.T) {
	path := filepath.Join(t.TempDir(), "catalog.db")
	s, cat := newStore(t, path)
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	s.Now = func() time.Time { return now }
	w := cat.Changes().Subscribe()
	defer w.Close()

	ci, secret, err := s.Create(&indexv1.CreateTokenRequest{Name: "ci", Scopes: []string{"push", "read"},
		ExpiresIn: durationpb.New(time.Hour), PushPattern: "*-myproject-*"}, "boot")
	if err != nil {
		t.Fatal(err)
	}
	if len(secret) != 64 || ci.GetCreatedBy() != "boot" || ci.GetExpires().AsTime() != now.Add(time.Hour) {
		t.Fatalf("Create = %v, secret of %d characters", ci, len(secret))
	}
	select {
	case ev := <-w.Events():
		if ev.GetKind() != indexv1.PathEventKind_PATH_EVENT_KIND_TOKENS_CHANGED {
			t.Errorf("event %v, want TOKENS_CHANGED", ev)
		}
	default:
		t.Error("no event for the new token")
	}

	id, err := s.Authenticate(t.Context(), secret)
	if err != nil || id.Name != "ci" || id.Scopes != auth.Read|auth.Push || id.MayPublish("foo-1.0") || !id.MayPublish("lib-myproject-2") {
		t.Errorf("Authenticate = %+v, %v", id, err)
	}
	if _, err := s.Authenticate(t.Context(), "nope"); !errors.Is(err, auth.ErrUnauthenticated) {
		t.Errorf("Authenticate of an unknown secret: %v", err)
	}
	if id, err := s.Authenticate(t.Context(), "boottok"); err != nil || id.Name != "boot" {
		t.Errorf("Authenticate of the file's token = %+v, %v", id, err)
	}

	// Listed with the pending use; then flushed and read back.
	toks, err := s.List()
	if err != nil || len(toks) != 2 || toks[0].GetName() != "boot" || toks[0].GetSource() != indexv1.TokenSource_TOKEN_SOURCE_FILE ||
		toks[1].GetName() != "ci" || !toks[1].GetLastUsed().AsTime().Equal(now) {
		t.Fatalf("List = %v, %v", toks, err)
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	s2 := New(cat, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if toks, err := s2.List(); err != nil || len(toks) != 1 || !toks[0].GetLastUsed().AsTime().Equal(now) {
		t.Errorf("List after a flush, from a new store = %v, %v", toks, err)
	}

	// Expired.
	now = now.Add(time.Hour)
	if _, err := s.Authenticate(t.Context(), secret); !errors.Is(err, auth.ErrUnauthenticated) || !strings.Contains(err.Error(), "expired") {
		t.Errorf("Authenticate after the expiry: %v", err)
	}

	// Revoked: gone, and the same name can be made again, unused.
	if _, err := s.Revoke("boot", "boot"); !errors.Is(err, fault.ErrPrecondition) {
		t.Errorf("Revoke of the file's token: %v", err)
	}
	if _, err := s.Revoke("ci", "boot"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Revoke("ci", "boot"); !errors.Is(err, fault.ErrNotFound) {
		t.Errorf("Revoke twice: %v", err)
	}
	if tok, _, err := s.Check(sha256.Sum256([]byte(secret))); tok != nil || err != nil {
		t.Errorf("Check after the revocation = %v, %v", tok, err)
	}
	if _, _, err := s.Create(&indexv1.CreateTokenRequest{Name: "ci", Scopes: []string{"read"}}, "boot"); err != nil {
		t.Fatal(err)
	}
	if toks, _ := s.List(); toks[1].GetLastUsed() != nil {
		t.Errorf("a new token named as a revoked one has a last use: %v", toks[1])
	}

	cat.Close()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(b, []byte(secret)) {
		t.Error("the catalogue file holds the secret")
	}
}

func TestCreateRefuses(t *testing.T) {
	s, _ := newStore(t, filepath.Join(t.TempDir(), "catalog.db"))
	if _, _, err := s.Create(&indexv1.CreateTokenRequest{Name: "taken", Scopes: []string{"read"}}, ""); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		req  *indexv1.CreateTokenRequest
		want error
	}{
		{"no name", &indexv1.CreateTokenRequest{Scopes: []string{"read"}}, fault.ErrInvalid},
		{"bad name", &indexv1.CreateTokenRequest{Name: "a b", Scopes: []string{"read"}}, fault.ErrInvalid},
		{"long name", &indexv1.CreateTokenRequest{Name: strings.Repeat("a", 65), Scopes: []string{"read"}}, fault.ErrInvalid},
		{"no scopes", &indexv1.CreateTokenRequest{Name: "a"}, fault.ErrInvalid},
		{"unknown scope", &indexv1.CreateTokenRequest{Name: "a", Scopes: []string{"root"}}, fault.ErrInvalid},
		{"negative expiry", &indexv1.CreateTokenRequest{Name: "a", Scopes: []string{"read"}, ExpiresIn: durationpb.New(-time.Second)}, fault.ErrInvalid},
		{"pattern without push", &indexv1.CreateTokenRequest{Name: "a", Scopes: []string{"read"}, PushPattern: "*"}, fault.ErrInvalid},
		{"bad pattern", &indexv1.CreateTokenRequest{Name: "a", Scopes: []string{"push"}, PushPattern: "["}, fault.ErrInvalid},
		{"control character", &indexv1.CreateTokenRequest{Name: "a", Scopes: []string{"read"}, Description: "a\nb"}, fault.ErrInvalid},
		{"name taken", &indexv1.CreateTokenRequest{Name: "taken", Scopes: []string{"read"}}, fault.ErrExists},
		{"name of a file token", &indexv1.CreateTokenRequest{Name: "boot", Scopes: []string{"read"}}, fault.ErrExists},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, _, err := s.Create(tt.req, ""); !errors.Is(err, tt.want) {
				t.Errorf("Create: %v, want %v", err, tt.want)
			}
		})
	}
}
