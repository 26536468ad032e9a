package httpapi

import (
	"context"
	"crypto/sha256"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nixcache/nixcache/platform/auth"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
)

// tokenIndex answers AuthenticateToken from a table of secrets, or with
// err; it counts the calls.
type tokenIndex struct {
	indexv1.IndexServiceClient
	tokens map[string]*indexv1.Token // by secret
	err    error
	calls  atomic.Int64
}

func (x *tokenIndex) AuthenticateToken(_ context.Context, req *indexv1.AuthenticateTokenRequest, _ ...grpc.CallOption) (*indexv1.AuthenticateTokenResponse, error) {
	x.calls.Add(1)
	if x.err != nil {
		return nil, x.err
	}
	for secret, tok := range x.tokens {
		if d := sha256.Sum256([]byte(secret)); string(d[:]) == string(req.GetSecretSha256()) {
			return &indexv1.AuthenticateTokenResponse{Valid: true, Token: tok}, nil
		}
	}
	return &indexv1.AuthenticateTokenResponse{Reason: "invalid token (unknown or revoked)"}, nil
}

func TestIndexTokens(t *testing.T) {
	x := &tokenIndex{tokens: map[string]*indexv1.Token{
		"citok": {Name: "ci", Scopes: []string{"push", "read"}, PushPattern: "*-app-*"},
		"soon":  {Name: "soon", Scopes: []string{"push"}, Expires: timestamppb.New(time.Now().Add(-time.Second))},
	}}
	file, err := auth.ParseTokens(strings.NewReader("local push localtok\n"), "test")
	if err != nil {
		t.Fatal(err)
	}
	tokens := NewIndexTokens(x, file, time.Second)
	ctx := t.Context()

	// Not live: every check asks the index.
	for range 2 {
		id, err := tokens.Authenticate(ctx, "citok")
		if err != nil || id.Name != "ci" || id.Scopes != auth.Read|auth.Push || id.PushPattern != "*-app-*" {
			t.Fatalf("Authenticate = %+v, %v", id, err)
		}
	}
	if n := x.calls.Load(); n != 2 {
		t.Errorf("%d calls to the index while the watch is down, want 2 (nothing kept)", n)
	}

	// Live: kept until dropped.
	tokens.setLive(true)
	x.calls.Store(0)
	for range 3 {
		if _, err := tokens.Authenticate(ctx, "citok"); err != nil {
			t.Fatal(err)
		}
	}
	if n := x.calls.Load(); n != 1 {
		t.Errorf("%d calls to the index while live, want 1", n)
	}
	delete(x.tokens, "citok") // revoked
	if _, err := tokens.Authenticate(ctx, "citok"); err != nil {
		t.Errorf("before the event, the kept answer holds: %v", err)
	}
	tokens.drop()
	if _, err := tokens.Authenticate(ctx, "citok"); !errors.Is(err, auth.ErrUnauthenticated) {
		t.Errorf("after TOKENS_CHANGED: %v, want ErrUnauthenticated", err)
	}

	// An answer past the token's expiry is not kept.
	x.tokens["soon"].Expires = timestamppb.New(time.Now().Add(50 * time.Millisecond))
	if _, err := tokens.Authenticate(ctx, "soon"); err != nil {
		t.Fatal(err)
	}
	tokens.mu.Lock()
	a := tokens.byID[sha256.Sum256([]byte("soon"))]
	tokens.mu.Unlock()
	if !a.until.Equal(x.tokens["soon"].GetExpires().AsTime()) {
		t.Errorf("answer kept until %v, want the token's expiry %v", a.until, x.tokens["soon"].GetExpires().AsTime())
	}

	// The index down: its tokens are refused with ErrUnavailable, the
	// gateway's file tokens still work.
	tokens.drop()
	x.err = status.Error(codes.Unavailable, "connection refused")
	if _, err := tokens.Authenticate(ctx, "soon"); !errors.Is(err, auth.ErrUnavailable) {
		t.Errorf("index down: %v, want ErrUnavailable", err)
	}
	if id, err := tokens.Authenticate(ctx, "localtok"); err != nil || id.Name != "local" {
		t.Errorf("file token, index down: %+v, %v", id, err)
	}
	// Never asked of the index: the file does not change.
	x.calls.Store(0)
	if _, err := tokens.Authenticate(ctx, "localtok"); err != nil || x.calls.Load() != 0 {
		t.Errorf("file token: %v, %d calls to the index, want 0", err, x.calls.Load())
	}
	// An index without AuthenticateToken knows no token: refused, not 503.
	x.err = status.Error(codes.Unimplemented, "unknown method")
	if _, err := tokens.Authenticate(ctx, "soon"); !errors.Is(err, auth.ErrUnauthenticated) {
		t.Errorf("older index: %v, want ErrUnauthenticated", err)
	}
}

// TestPushPattern: a token limited to a pattern publishes only paths whose
// names match it.
func TestPushPattern(t *testing.T) {
	id := auth.Identity{Name: "ci", Scopes: auth.Push, PushPattern: "*-myproject-*"}
	for name, want := range map[string]bool{"lib-myproject-1.0": true, "myproject-1.0": false, "hello-2.12": false} {
		if got := id.MayPublish(name); got != want {
			t.Errorf("MayPublish(%q) = %v, want %v", name, got, want)
		}
	}
	if !(auth.Identity{Name: "any"}).MayPublish("hello-2.12") {
		t.Error("a token without a pattern may not publish")
	}
}

// patternTokens authenticates every secret as a push token limited to
// pattern.
type patternTokens string

func (p patternTokens) Authenticate(context.Context, string) (auth.Identity, error) {
	return auth.Identity{Name: "ci", Scopes: auth.Push, PushPattern: string(p)}, nil
}

// TestPutNarinfoPushPattern: a narinfo PUT with a token limited to a
// pattern publishes a path whose name matches, and is refused (403)
// otherwise, before the index is asked.
func TestPutNarinfoPushPattern(t *testing.T) {
	hash := hashPart("patterned")
	body := []byte(pushedNarinfo(hash).String()) // names pushed-1.0
	for pattern, want := range map[string]int{"pushed-*": 204, "*-myproject-*": 403} {
		e := newEnv(t, func(c *Config) { c.Auth.Tokens = patternTokens(pattern) })
		resp := e.do(t, request{method: "PUT", path: "/" + hash + ".narinfo", body: body, bearer: "any"})
		if resp.code != want {
			t.Errorf("pattern %q: PUT narinfo of pushed-1.0: %d %s, want %d", pattern, resp.code, resp.body, want)
		}
		if want == 403 && !strings.Contains(string(resp.body), pattern) {
			t.Errorf("pattern %q: the refusal %q does not name the pattern", pattern, resp.body)
		}
	}
}
