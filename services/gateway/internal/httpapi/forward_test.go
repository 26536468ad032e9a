package httpapi

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/nixcache/nixcache/nix/nixbase32"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
)

// credentialsSeen wraps the fake index and records the authorization
// metadata each method was called with.
type credentialsSeen struct {
	*fakeIndex
	mu   sync.Mutex
	seen map[string][]string
}

func (c *credentialsSeen) record(ctx context.Context, method string) {
	md, _ := metadata.FromIncomingContext(ctx)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seen[method] = md.Get("authorization")
}

func (c *credentialsSeen) get(method string) ([]string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.seen[method]
	return v, ok
}

func (c *credentialsSeen) PutPathInfo(ctx context.Context, req *indexv1.PutPathInfoRequest) (*indexv1.PutPathInfoResponse, error) {
	c.record(ctx, "PutPathInfo")
	return c.fakeIndex.PutPathInfo(ctx, req)
}

func (c *credentialsSeen) PutNar(stream indexv1.IndexService_PutNarServer) error {
	c.record(stream.Context(), "PutNar")
	return c.fakeIndex.PutNar(stream)
}

func (c *credentialsSeen) GetPathInfo(ctx context.Context, req *indexv1.GetPathInfoRequest) (*indexv1.GetPathInfoResponse, error) {
	c.record(ctx, "GetPathInfo")
	return c.fakeIndex.GetPathInfo(ctx, req)
}

// TestPushForwardsCredentials: the index gets the pusher's Authorization,
// as Nix sent it, on the writes (it checks the push scope again); reads
// carry none.
func TestPushForwardsCredentials(t *testing.T) {
	var seen *credentialsSeen
	e := newEnvServing(t, func(f *fakeIndex) indexv1.IndexServiceServer {
		seen = &credentialsSeen{fakeIndex: f, seen: map[string][]string{}}
		return seen
	})
	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte("nixcache:"+pushToken))
	hash := hashPart("pushed")
	put := e.do(t, request{method: http.MethodPut, path: "/" + hash + ".narinfo",
		body: []byte(pushedNarinfo(hash).String()), header: map[string]string{"Authorization": basic}})
	if put.code != http.StatusNoContent {
		t.Fatalf("PUT narinfo: %d %s", put.code, put.body)
	}
	if got, _ := seen.get("PutPathInfo"); len(got) != 1 || got[0] != basic {
		t.Errorf("PutPathInfo got authorization %q, want the pusher's", got)
	}

	file := pattern("forwarded-nar", 1000)
	sum := sha256.Sum256(file)
	e.do(t, request{method: http.MethodPut, path: "/nar/" + nixbase32.EncodeToString(sum[:]) + ".nar.xz", body: file, bearer: pushToken})
	if got, ok := seen.get("PutNar"); !ok || len(got) != 1 || got[0] != "Bearer "+pushToken {
		t.Errorf("PutNar (called %v) got authorization %q, want the pusher's", ok, got)
	}

	e.do(t, request{method: http.MethodGet, path: "/" + hash + ".narinfo", bearer: readToken})
	if got, ok := seen.get("GetPathInfo"); !ok || len(got) != 0 {
		t.Errorf("GetPathInfo (called %v) got authorization %q, want none", ok, got)
	}
}

// TestIndexRefusesCredentials: a push the gateway let through but the
// index refused (its token file differs) answers the index's status and
// reason, and the gateway's log says what to check.
func TestIndexRefusesCredentials(t *testing.T) {
	e := newEnv(t)
	e.index.mu.Lock()
	e.index.err = status.Error(codes.Unauthenticated, "push is disabled: no credentials are configured (-auth-file)")
	e.index.mu.Unlock()
	hash := hashPart("refused")
	r := e.do(t, request{method: http.MethodPut, path: "/" + hash + ".narinfo", body: []byte(pushedNarinfo(hash).String()), bearer: pushToken})
	if r.code != http.StatusUnauthorized || !strings.Contains(string(r.body), "index: push is disabled") {
		t.Errorf("PUT narinfo refused by the index: %d %q, want 401 naming the index", r.code, r.body)
	}
	if logs := e.logs.String(); !strings.Contains(logs, "same token file") {
		t.Errorf("the gateway's log does not point at the token files:\n%s", logs)
	}
}
