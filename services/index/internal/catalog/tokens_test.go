package catalog_test

import (
	"crypto/sha256"
	"errors"
	"path/filepath"
	"testing"
	"time"

	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/fault"
)

// TestTokens: tokens by digest, unique names, last uses that only move
// forward and survive a reopen, revocation.
func TestTokens(t *testing.T) {
	path := filepath.Join(t.TempDir(), "catalog.db")
	c := open(t, path)
	d1, d2 := sha256.Sum256([]byte("one")), sha256.Sum256([]byte("two"))
	if err := c.CreateToken(d1, &indexv1.Token{Name: "ci", Scopes: []string{"push"}}); err != nil {
		t.Fatal(err)
	}
	if err := c.CreateToken(d2, &indexv1.Token{Name: "ci"}); !errors.Is(err, fault.ErrExists) {
		t.Errorf("a second token named ci: %v, want ErrExists", err)
	}
	if err := c.CreateToken(d1, &indexv1.Token{Name: "other"}); !errors.Is(err, fault.ErrExists) {
		t.Errorf("a second token with the same digest: %v, want ErrExists", err)
	}
	at := time.Unix(1_800_000_000, 5)
	if err := c.RecordTokenUse(map[string]time.Time{"ci": at}); err != nil {
		t.Fatal(err)
	}
	if err := c.RecordTokenUse(map[string]time.Time{"ci": at.Add(-time.Hour)}); err != nil {
		t.Fatal(err)
	}
	c.Close()
	c = open(t, path)
	defer c.Close()
	tok, err := c.Token(d1)
	if err != nil || tok.GetName() != "ci" || !tok.GetLastUsed().AsTime().Equal(at) {
		t.Fatalf("Token after a reopen = %v, %v; want ci last used %v", tok, err, at)
	}
	if tok, err := c.Token(d2); tok != nil || err != nil {
		t.Errorf("Token of an unknown digest = %v, %v", tok, err)
	}
	if _, err := c.RevokeToken("ci"); err != nil {
		t.Fatal(err)
	}
	if tok, err := c.Token(d1); tok != nil || err != nil {
		t.Errorf("Token after the revocation = %v, %v", tok, err)
	}
	if toks, err := c.Tokens(); len(toks) != 0 || err != nil {
		t.Errorf("Tokens after the revocation = %v, %v", toks, err)
	}
	if _, err := c.RevokeToken("ci"); !errors.Is(err, fault.ErrNotFound) {
		t.Errorf("revoke twice: %v, want ErrNotFound", err)
	}
}
