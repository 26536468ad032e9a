// Package tokens is the index's set of tokens: those of the token file
// (-auth-file, the bootstrap, read-only) and those made at run time
// (AdminService.CreateToken), kept in the catalogue. It answers "which
// token is this secret" for the index's own auth policy and, through
// IndexService.AuthenticateToken, for the gateways.
//
// Only the SHA-256 digest of a secret is stored or compared. A secret is
// 32 random bytes, so its digest can be neither reversed nor guessed: a
// slow password hash would add nothing. Looking a digest up in the
// catalogue is not constant-time, which tells an attacker nothing about
// any secret.
package tokens

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"path"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nixcache/nixcache/platform/auth"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/catalog"
	"github.com/nixcache/nixcache/services/index/internal/fault"
)

// Bounds of what CreateToken accepts.
const (
	maxNameLen        = 64
	maxDescriptionLen = 1024
	maxPatternLen     = 256
	maxExpiresIn      = 100 * 365 * 24 * time.Hour
	secretBytes       = 32
)

// DefaultFlushInterval is how often the last uses are written.
const DefaultFlushInterval = 5 * time.Second

// Store is the index's tokens. It is safe for concurrent use.
type Store struct {
	cat  *catalog.Catalog
	file *auth.Tokens // nil without a token file
	log  *slog.Logger
	// Now is the clock of expiry and last use (tests set it).
	Now func() time.Time

	mu sync.Mutex
	// uses are the last uses not yet written, by token name.
	uses map[string]time.Time

	checks *prometheus.CounterVec // by token and result
}

// New returns the store of the tokens of file (nil: none) and cat.
func New(cat *catalog.Catalog, file *auth.Tokens, log *slog.Logger) *Store {
	return &Store{cat: cat, file: file, log: log, Now: time.Now, uses: map[string]time.Time{},
		checks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nixcache_token_checks_total",
			Help: "Tokens checked by the index (its own calls and the gateways' AuthenticateToken), by token name (\"\" when unknown) and result: ok, unknown (or revoked), expired.",
		}, []string{"token", "result"})}
}

// Collectors are the store's metrics.
func (s *Store) Collectors() []prometheus.Collector { return []prometheus.Collector{s.checks} }

// Authenticate implements auth.Authenticator for the index's own policy.
func (s *Store) Authenticate(_ context.Context, secret string) (auth.Identity, error) {
	tok, reason, err := s.Check(sha256.Sum256([]byte(secret)))
	switch {
	case err != nil:
		s.log.Error("check token", "err", err)
		return auth.Identity{}, auth.Unavailable("the tokens cannot be read")
	case tok == nil:
		return auth.Identity{}, auth.Unauthenticated(reason)
	}
	return Identity(tok), nil
}

// Identity is the identity of a token.
func Identity(tok *indexv1.Token) auth.Identity {
	scopes, _ := auth.ParseScopes(strings.Join(tok.GetScopes(), ","))
	return auth.Identity{Name: tok.GetName(), Scopes: scopes, PushPattern: tok.GetPushPattern()}
}

// Check returns the token whose secret has digest, valid now, and counts
// it as used; or nil and why not.
func (s *Store) Check(digest catalog.TokenDigest) (tok *indexv1.Token, reason string, err error) {
	now := s.Now()
	if id, ok := s.file.LookupDigest(digest); ok {
		tok = fileToken(id)
	} else if tok, err = s.cat.Token(digest); err != nil {
		return nil, "", err
	}
	switch {
	case tok == nil:
		s.checks.WithLabelValues("", "unknown").Inc()
		return nil, "invalid token (unknown or revoked)", nil
	case tok.GetExpires() != nil && !now.Before(tok.GetExpires().AsTime()):
		s.checks.WithLabelValues(tok.GetName(), "expired").Inc()
		return nil, fmt.Sprintf("token %q expired at %s", tok.GetName(), tok.GetExpires().AsTime().UTC().Format(time.RFC3339)), nil
	}
	s.checks.WithLabelValues(tok.GetName(), "ok").Inc()
	s.mu.Lock()
	s.uses[tok.GetName()] = now
	s.mu.Unlock()
	tok.LastUsed = timestamppb.New(now)
	return tok, "", nil
}

func fileToken(id auth.Identity) *indexv1.Token {
	return &indexv1.Token{Name: id.Name, Scopes: scopeNames(id.Scopes), Source: indexv1.TokenSource_TOKEN_SOURCE_FILE}
}

func scopeNames(s auth.Scope) []string {
	if s == 0 {
		return nil
	}
	return strings.Split(s.String(), ",")
}

// Create makes a token as req asks, by createdBy, and returns it with its
// secret.
func (s *Store) Create(req *indexv1.CreateTokenRequest, createdBy string) (*indexv1.Token, string, error) {
	tok, err := s.validate(req)
	if err != nil {
		return nil, "", err
	}
	tok.CreatedBy = createdBy
	raw := make([]byte, secretBytes)
	if _, err := rand.Read(raw); err != nil {
		return nil, "", fmt.Errorf("make a secret: %w", err)
	}
	secret := hex.EncodeToString(raw)
	if err := s.cat.CreateToken(sha256.Sum256([]byte(secret)), tok); err != nil {
		return nil, "", err
	}
	expires := "never"
	if tok.GetExpires() != nil {
		expires = tok.GetExpires().AsTime().UTC().Format(time.RFC3339)
	}
	s.log.Info("token created", "token", tok.GetName(), "scopes", strings.Join(tok.GetScopes(), ","),
		"expires", expires, "push_pattern", tok.GetPushPattern(), "by", createdBy)
	return tok, secret, nil
}

// validate checks req and returns the token it describes, created now.
func (s *Store) validate(req *indexv1.CreateTokenRequest) (*indexv1.Token, error) {
	name := req.GetName()
	if err := validName(name); err != nil {
		return nil, err
	}
	for _, id := range s.file.Names() {
		if id.Name == name {
			return nil, fault.Exists("token %q is in the token file", name)
		}
	}
	if len(req.GetScopes()) == 0 {
		return nil, fault.Invalid("scopes: want at least one of read, push, admin")
	}
	scopes, err := auth.ParseScopes(strings.Join(req.GetScopes(), ","))
	if err != nil {
		return nil, fault.Invalid("scopes: %v", err)
	}
	if len(req.GetDescription()) > maxDescriptionLen || !printable(req.GetDescription()) {
		return nil, fault.Invalid("description: at most %d printable characters", maxDescriptionLen)
	}
	pattern := req.GetPushPattern()
	switch {
	case len(pattern) > maxPatternLen || !printable(pattern):
		return nil, fault.Invalid("push_pattern: at most %d printable characters", maxPatternLen)
	case pattern != "" && !scopes.Has(auth.Push):
		return nil, fault.Invalid("push_pattern is for a token with the push scope")
	}
	if _, err := path.Match(pattern, ""); err != nil {
		return nil, fault.Invalid("push_pattern %q: %v", pattern, err)
	}
	now := s.Now()
	tok := &indexv1.Token{Name: name, Scopes: scopeNames(scopes), Source: indexv1.TokenSource_TOKEN_SOURCE_CATALOG,
		Created: timestamppb.New(now), Description: req.GetDescription(), PushPattern: pattern}
	if d := req.GetExpiresIn(); d != nil {
		if err := d.CheckValid(); err != nil {
			return nil, fault.Invalid("expires_in: %v", err)
		}
		switch dur := d.AsDuration(); {
		case dur < 0 || dur > maxExpiresIn:
			return nil, fault.Invalid("expires_in %s: want 0 (never) to %s", dur, maxExpiresIn)
		case dur > 0:
			tok.Expires = timestamppb.New(now.Add(dur))
		}
	}
	return tok, nil
}

func validName(name string) error {
	if name == "" || len(name) > maxNameLen {
		return fault.Invalid("name: want 1 to %d characters", maxNameLen)
	}
	for _, r := range name {
		if !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || r == '.' || r == '_' || r == '-') {
			return fault.Invalid("name %q: want letters, digits and \"._-\"", name)
		}
	}
	return nil
}

func printable(s string) bool {
	for _, r := range s {
		if r < ' ' || r == 0x7f || r == '\uFFFD' {
			return false
		}
	}
	return true
}

// List returns every token, those of the file first, then those of the
// catalogue, each in name order, with their last uses.
func (s *Store) List() ([]*indexv1.Token, error) {
	cat, err := s.cat.Tokens()
	if err != nil {
		return nil, err
	}
	var toks []*indexv1.Token
	for _, id := range s.file.Names() {
		tok := fileToken(id)
		if tok.LastUsed, err = s.cat.TokenUse(id.Name); err != nil {
			return nil, err
		}
		toks = append(toks, tok)
	}
	sort.Slice(toks, func(i, j int) bool { return toks[i].GetName() < toks[j].GetName() })
	toks = append(toks, cat...)
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, tok := range toks {
		if at, ok := s.uses[tok.GetName()]; ok && (tok.LastUsed == nil || at.After(tok.GetLastUsed().AsTime())) {
			tok.LastUsed = timestamppb.New(at)
		}
	}
	return toks, nil
}

// Revoke deletes the catalogue's token named name and returns it.
func (s *Store) Revoke(name string, by string) (*indexv1.Token, error) {
	for _, id := range s.file.Names() {
		if id.Name == name {
			return nil, fault.Precondition("token %q is in the token file: remove it there and restart", name)
		}
	}
	s.mu.Lock()
	// A use not yet written must not be written under the name after.
	delete(s.uses, name)
	tok, err := s.cat.RevokeToken(name)
	s.mu.Unlock()
	if err != nil {
		return nil, err
	}
	s.log.Info("token revoked", "token", name, "by", by)
	return tok, nil
}

// Flush writes the last uses recorded since the previous flush.
// Checks do not wait for the write.
func (s *Store) Flush() error {
	s.mu.Lock()
	uses := s.uses
	s.uses = map[string]time.Time{}
	s.mu.Unlock()
	if len(uses) == 0 {
		return nil
	}
	err := s.cat.RecordTokenUse(uses)
	if err != nil {
		// Kept for the next flush, unless used again since.
		s.mu.Lock()
		for name, at := range uses {
			if _, ok := s.uses[name]; !ok {
				s.uses[name] = at
			}
		}
		s.mu.Unlock()
	}
	return err
}

// Run writes the last uses every interval until ctx ends, and once more
// then.
func (s *Store) Run(ctx context.Context, interval time.Duration) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			if err := s.Flush(); err != nil {
				s.log.Warn("record token use", "err", err)
			}
			return
		case <-tick.C:
			if err := s.Flush(); err != nil {
				s.log.Warn("record token use", "err", err)
			}
		}
	}
}
