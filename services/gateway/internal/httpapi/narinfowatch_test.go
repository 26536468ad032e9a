package httpapi

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
)

// watchIndex is the fake index with a WatchPaths the test drives: each
// call is handed to the test as a watchSession.
type watchIndex struct {
	*fakeIndex
	lookups  atomic.Int64 // GetPathInfo calls
	sessions chan *watchSession
	// duringPut, when set, runs inside PutPathInfo before the path is
	// published (added to the fake's paths).
	duringPut func()
	// duringStat, when set, runs inside StatNar before it answers.
	duringStat atomic.Pointer[func()]
}

// watchSession is one WatchPaths stream: the test sends its messages and
// ends it.
type watchSession struct {
	send chan *indexv1.WatchPathsResponse
	end  chan error
}

func (w *watchIndex) GetPathInfo(ctx context.Context, req *indexv1.GetPathInfoRequest) (*indexv1.GetPathInfoResponse, error) {
	w.lookups.Add(1)
	return w.fakeIndex.GetPathInfo(ctx, req)
}

func (w *watchIndex) PutPathInfo(ctx context.Context, req *indexv1.PutPathInfoRequest) (*indexv1.PutPathInfoResponse, error) {
	if w.duringPut != nil {
		w.duringPut()
	}
	resp, err := w.fakeIndex.PutPathInfo(ctx, req)
	if err == nil {
		w.mu.Lock()
		w.paths[req.GetInfo().GetStorePath()[len("/nix/store/"):][:32]] = req.GetInfo()
		w.mu.Unlock()
	}
	return resp, err
}

func (w *watchIndex) StatNar(ctx context.Context, req *indexv1.StatNarRequest) (*indexv1.StatNarResponse, error) {
	if f := w.duringStat.Load(); f != nil {
		(*f)()
	}
	return w.fakeIndex.StatNar(ctx, req)
}

func (w *watchIndex) WatchPaths(req *indexv1.WatchPathsRequest, stream indexv1.IndexService_WatchPathsServer) error {
	if got := req.GetHeartbeatInterval().AsDuration(); got != WatchHeartbeat {
		return status.Errorf(codes.InvalidArgument, "heartbeat %v, want %v", got, WatchHeartbeat)
	}
	s := &watchSession{send: make(chan *indexv1.WatchPathsResponse), end: make(chan error, 1)}
	select {
	case w.sessions <- s:
	case <-stream.Context().Done():
		return stream.Context().Err()
	}
	for {
		select {
		case msg := <-s.send:
			if err := stream.Send(msg); err != nil {
				return err
			}
		case err := <-s.end:
			return err
		case <-stream.Context().Done():
			return stream.Context().Err()
		}
	}
}

// newWatchEnv is newEnv over a watchIndex, with the gateway watching it;
// configure may change its Config.
func newWatchEnv(t *testing.T, ttl time.Duration, configure ...func(*Config)) (*env, *watchIndex, *Handler) {
	t.Helper()
	var wi *watchIndex
	e := newEnvServing(t, func(f *fakeIndex) indexv1.IndexServiceServer {
		wi = &watchIndex{fakeIndex: f, sessions: make(chan *watchSession)}
		return wi
	}, append([]func(*Config){func(c *Config) {
		c.NarinfoCacheTTL, c.NarinfoCacheMaxAge = ttl, time.Hour
	}}, configure...)...)
	ctx, cancel := context.WithCancel(context.Background())
	watched := make(chan struct{})
	go func() { defer close(watched); e.h.WatchIndex(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-watched
	})
	return e, wi, e.h
}

// nextSession waits for the gateway to (re)subscribe.
func nextSession(t *testing.T, wi *watchIndex, within time.Duration) *watchSession {
	t.Helper()
	select {
	case s := <-wi.sessions:
		return s
	case <-time.After(within):
		t.Fatalf("the gateway did not watch the index within %v", within)
		return nil
	}
}

// waitFor polls cond every 5 ms for up to 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within 5 s: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// lookupsFor returns how many of n GETs of hash's narinfo reached the
// index, failing unless each answered code.
func lookupsFor(t *testing.T, e *env, wi *watchIndex, hash string, n, code int) int64 {
	t.Helper()
	before := wi.lookups.Load()
	for range n {
		if got := e.do(t, request{method: "GET", path: "/" + hash + ".narinfo"}).code; got != code {
			t.Fatalf("GET %s.narinfo: %d, want %d", hash, got, code)
		}
	}
	return wi.lookups.Load() - before
}

func TestWatchIndex(t *testing.T) {
	e, wi, h := newWatchEnv(t, 0)
	p := e.addPath("watched", 100)
	absent := hashPart("later")

	s := nextSession(t, wi, 5*time.Second)
	// Not in sync yet, and no TTL: nothing is cached.
	if n := lookupsFor(t, e, wi, p.hash, 3, 200); n != 3 {
		t.Errorf("before the watch is in sync: %d of 3 lookups reached the index, want 3", n)
	}
	s.send <- &indexv1.WatchPathsResponse{Synced: true, CacheNotFound: true}
	waitFor(t, "the watch in sync", func() bool { return h.NarinfoCacheStats().WatchUp })

	// In sync: found and absent paths are asked once.
	if n := lookupsFor(t, e, wi, p.hash, 3, 200); n != 1 {
		t.Errorf("in sync: %d of 3 lookups of a path reached the index, want 1", n)
	}
	if n := lookupsFor(t, e, wi, absent, 3, 404); n != 1 {
		t.Errorf("in sync: %d of 3 lookups of an absent path reached the index, want 1", n)
	}
	// Heartbeats change nothing.
	s.send <- &indexv1.WatchPathsResponse{}
	if n := lookupsFor(t, e, wi, p.hash, 1, 200); n != 0 {
		t.Errorf("after a heartbeat the cached path was asked again")
	}

	// The path is deleted: the event drops it at once.
	e.index.mu.Lock()
	delete(e.index.paths, p.hash)
	e.index.mu.Unlock()
	s.send <- &indexv1.WatchPathsResponse{Events: []*indexv1.PathEvent{{Kind: indexv1.PathEventKind_PATH_EVENT_KIND_REMOVED, HashParts: []string{p.hash}}}}
	waitFor(t, "the event received", func() bool { return h.NarinfoCacheStats().WatchEvents == 1 })
	if n := lookupsFor(t, e, wi, p.hash, 2, 404); n != 1 {
		t.Errorf("after the delete event: %d of 2 lookups reached the index, want 1 (then the 404 cached)", n)
	}
	// The absent path is published: its cached 404 is dropped.
	q := e.addPath("later", 100)
	if n := lookupsFor(t, e, wi, q.hash, 1, 404); n != 0 {
		t.Fatal("setup: the fake index answered a lookup that should have been a cached 404")
	}
	s.send <- &indexv1.WatchPathsResponse{Events: []*indexv1.PathEvent{{Kind: indexv1.PathEventKind_PATH_EVENT_KIND_PUBLISHED, HashParts: []string{q.hash}}}}
	waitFor(t, "the event received", func() bool { return h.NarinfoCacheStats().WatchEvents == 2 })
	if n := lookupsFor(t, e, wi, q.hash, 2, 200); n != 1 {
		t.Errorf("after the publish event: %d of 2 lookups reached the index, want 1", n)
	}

	// The stream ends (the index restarts): the cache is dropped, nothing
	// is cached until the gateway is in sync again.
	s.end <- status.Error(codes.Unavailable, "index restarting")
	waitFor(t, "the watch down", func() bool { return !h.NarinfoCacheStats().WatchUp })
	s = nextSession(t, wi, 5*time.Second)
	if n := lookupsFor(t, e, wi, q.hash, 2, 200); n != 2 {
		t.Errorf("while resubscribing: %d of 2 lookups reached the index, want 2", n)
	}
	s.send <- &indexv1.WatchPathsResponse{Synced: true, CacheNotFound: true}
	waitFor(t, "the watch in sync again", func() bool { return h.NarinfoCacheStats().WatchUp })
	if n := lookupsFor(t, e, wi, q.hash, 2, 200); n != 1 {
		t.Errorf("in sync again: %d of 2 lookups reached the index, want 1", n)
	}
	if st := h.NarinfoCacheStats(); st.WatchSyncs != 2 {
		t.Errorf("watch syncs %d, want 2", st.WatchSyncs)
	}
}

// TestWatchIndexStalled: a stream that goes silent (no heartbeat) is cut
// after WatchTimeout, the cache dropped, and the gateway watches again.
func TestWatchIndexStalled(t *testing.T) {
	e, wi, h := newWatchEnv(t, time.Minute)
	p := e.addPath("stalled", 100)
	s := nextSession(t, wi, 5*time.Second)
	s.send <- &indexv1.WatchPathsResponse{Synced: true, CacheNotFound: true}
	waitFor(t, "the watch in sync", func() bool { return h.NarinfoCacheStats().WatchUp })
	lookupsFor(t, e, wi, p.hash, 1, 200)
	silent := time.Now()
	next := nextSession(t, wi, WatchTimeout+5*time.Second)
	if d := time.Since(silent); d < WatchTimeout-100*time.Millisecond {
		t.Errorf("resubscribed %v after the stream went silent, want after the %v timeout", d, WatchTimeout)
	}
	if h.NarinfoCacheStats().WatchUp {
		t.Error("the watch is still up after it stalled")
	}
	// The path was dropped; now it is cached for the TTL only.
	if n := lookupsFor(t, e, wi, p.hash, 2, 200); n != 1 {
		t.Errorf("after the stall: %d of 2 lookups reached the index, want 1 (dropped, then cached for the TTL)", n)
	}
	if !strings.Contains(e.logs.String(), "nothing received for") {
		t.Errorf("the log does not say why the watch was lost:\n%s", e.logs.String())
	}
	close(next.end)
}

// TestPushReadsItsWrite: a 404 cached by a lookup while the path was being
// pushed through this gateway (before the index's event) is not served
// after the push answered.
func TestPushReadsItsWrite(t *testing.T) {
	e, wi, h := newWatchEnv(t, 0)
	s := nextSession(t, wi, 5*time.Second)
	s.send <- &indexv1.WatchPathsResponse{Synced: true, CacheNotFound: true}
	waitFor(t, "the watch in sync", func() bool { return h.NarinfoCacheStats().WatchUp })
	hash := hashPart("pushed")
	url := "/" + hash + ".narinfo"
	wi.duringPut = func() {
		if got := e.do(t, request{method: "GET", path: url}).code; got != 404 {
			t.Errorf("GET during the push: %d, want 404 (not published yet)", got)
		}
	}
	resp := e.do(t, request{method: "PUT", path: url, body: []byte(pushedNarinfo(hash).String()), bearer: pushToken})
	if resp.code != 204 {
		t.Fatalf("PUT: %d %s", resp.code, resp.body)
	}
	if got := e.do(t, request{method: "GET", path: url}).code; got != 200 {
		t.Errorf("GET after the push answered: %d, want 200", got)
	}
}
