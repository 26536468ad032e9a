package httpapi

import (
	"context"
	"crypto/sha256"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nixcache/nixcache/platform/auth"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
)

// How long the gateway keeps the index's answer that a token is valid
// (never a refusal: a new token works at once).
const (
	// TokenCacheLive is the bound while the index watch is in sync: a
	// revocation drops every answer at once (TOKENS_CHANGED), so this
	// only bounds how stale the token's last use at the index may be.
	// While the watch is not in sync nothing is kept: every request
	// with a token asks the index.
	TokenCacheLive = 10 * time.Second
	// maxTokenCache bounds the entries; a full cache is emptied.
	maxTokenCache = 4096
)

// IndexTokens authenticates tokens by asking the index
// (IndexService.AuthenticateToken, with the SHA-256 of the secret: the
// secret never leaves the gateway), keeping valid answers a short time
// while the index watch is in sync, none otherwise.
// A token of the gateway's own token file is accepted without asking;
// any other token that cannot be checked is refused with
// auth.ErrUnavailable (503). It is safe for concurrent use.
type IndexTokens struct {
	index   indexv1.IndexServiceClient
	file    *auth.Tokens // nil: none
	timeout time.Duration

	mu   sync.Mutex
	live bool   // the index watch is in sync
	gen  uint64 // bumped by every drop, so an answer asked before it is not kept
	byID map[[sha256.Size]byte]tokenAnswer

	requests *prometheus.CounterVec // by token name
	lookups  *prometheus.CounterVec // by result
}

type tokenAnswer struct {
	id    auth.Identity
	until time.Time // min(kept until, the token's expiry)
}

// NewIndexTokens returns an IndexTokens asking index, each call bounded
// by timeout, with the gateway's token file (nil: none).
func NewIndexTokens(index indexv1.IndexServiceClient, file *auth.Tokens, timeout time.Duration) *IndexTokens {
	return &IndexTokens{index: index, file: file, timeout: timeout, byID: map[[sha256.Size]byte]tokenAnswer{},
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nixcache_token_requests_total",
			Help: "Requests that authenticated with a token, by token name.",
		}, []string{"token"}),
		lookups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nixcache_token_lookups_total",
			Help: "Token checks by result: cached (answered from memory), index (asked the index: valid), file (the gateway's token file), refused (unknown, revoked or expired), unavailable (the index could not be asked: 503).",
		}, []string{"result"}),
	}
}

// Collectors are the metrics.
func (t *IndexTokens) Collectors() []prometheus.Collector {
	return []prometheus.Collector{t.requests, t.lookups}
}

// Authenticate implements auth.Authenticator.
func (t *IndexTokens) Authenticate(ctx context.Context, secret string) (auth.Identity, error) {
	digest := sha256.Sum256([]byte(secret))
	now := time.Now()
	// The gateway's own file first: it does not change while the gateway
	// runs, and needs no call to the index.
	if id, ok := t.file.LookupDigest(digest); ok {
		t.lookups.WithLabelValues("file").Inc()
		t.requests.WithLabelValues(id.Name).Inc()
		return id, nil
	}
	t.mu.Lock()
	a, ok := t.byID[digest]
	gen := t.gen
	t.mu.Unlock()
	if ok && now.Before(a.until) {
		t.lookups.WithLabelValues("cached").Inc()
		t.requests.WithLabelValues(a.id.Name).Inc()
		return a.id, nil
	}
	ctx, cancel := context.WithTimeout(ctx, t.timeout)
	resp, err := t.index.AuthenticateToken(ctx, &indexv1.AuthenticateTokenRequest{SecretSha256: digest[:]})
	cancel()
	if err == nil && resp.GetValid() {
		id := tokenIdentity(resp.GetToken())
		t.keep(digest, id, resp.GetToken(), gen, now)
		t.lookups.WithLabelValues("index").Inc()
		t.requests.WithLabelValues(id.Name).Inc()
		return id, nil
	}
	reason := resp.GetReason()
	switch {
	case status.Code(err) == codes.Unimplemented:
		// An index older than tokens as data: it knows none.
		reason = "invalid token"
	case err != nil:
		t.lookups.WithLabelValues("unavailable").Inc()
		return auth.Identity{}, auth.Unavailable("the token cannot be checked: the index does not answer")
	}
	t.lookups.WithLabelValues("refused").Inc()
	return auth.Identity{}, auth.Unauthenticated(reason)
}

func tokenIdentity(tok *indexv1.Token) auth.Identity {
	var scopes auth.Scope
	for _, name := range tok.GetScopes() {
		if s, err := auth.ParseScopes(name); err == nil {
			scopes |= s
		}
	}
	return auth.Identity{Name: tok.GetName(), Scopes: scopes, PushPattern: tok.GetPushPattern()}
}

// keep caches the index's answer, unless the cache was dropped since gen.
func (t *IndexTokens) keep(digest [sha256.Size]byte, id auth.Identity, tok *indexv1.Token, gen uint64, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.gen != gen || !t.live {
		return
	}
	until := now.Add(TokenCacheLive)
	if exp := tok.GetExpires(); exp != nil && exp.AsTime().Before(until) {
		until = exp.AsTime()
	}
	if len(t.byID) >= maxTokenCache {
		clear(t.byID)
	}
	t.byID[digest] = tokenAnswer{id: id, until: until}
}

// drop forgets every answer (a token changed, or the watch got in sync or
// was lost).
func (t *IndexTokens) drop() {
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.gen++
	clear(t.byID)
}

// setLive drops every answer and says whether the watch is in sync.
func (t *IndexTokens) setLive(live bool) {
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.live = live
	t.gen++
	clear(t.byID)
}
