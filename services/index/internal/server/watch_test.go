package server_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/nixcache/nixcache/nix/compression"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/catalog"
	"github.com/nixcache/nixcache/services/index/internal/nartest"
	"github.com/nixcache/nixcache/services/index/internal/server"
)

// watch opens a WatchPaths stream and checks its first message is the
// synced marker.
func watch(t *testing.T, ctx context.Context, c indexv1.IndexServiceClient, heartbeat time.Duration) indexv1.IndexService_WatchPathsClient {
	t.Helper()
	stream, err := c.WatchPaths(ctx, &indexv1.WatchPathsRequest{HeartbeatInterval: durationpb.New(heartbeat)})
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil {
		t.Fatalf("first message: %v", err)
	}
	if !first.GetSynced() || len(first.GetEvents()) != 0 {
		t.Fatalf("first message %v, want the synced marker alone", first)
	}
	// These indexes have no upstream: a path they lack is found only once
	// published.
	if !first.GetCacheNotFound() {
		t.Errorf("first message %v: cache_not_found unset for an index without upstreams", first)
	}
	return stream
}

// nextEvent skips heartbeats and returns the first event of the next
// message that has one.
func nextEvent(t *testing.T, stream indexv1.IndexService_WatchPathsClient) *indexv1.PathEvent {
	t.Helper()
	for {
		msg, err := stream.Recv()
		if err != nil {
			t.Fatalf("Recv: %v", err)
		}
		if msg.GetSynced() {
			t.Fatalf("a second synced marker: %v", msg)
		}
		if len(msg.GetEvents()) > 0 {
			return msg.GetEvents()[0]
		}
	}
}

func TestWatchPaths(t *testing.T) {
	idx := startIndex(t, t.TempDir(), signerConn{fake: fakeSigner(t)})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream := watch(t, ctx, idx.client, 100*time.Millisecond)

	// Quiet: heartbeats only, about every 100 ms.
	start := time.Now()
	for range 3 {
		msg, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if msg.GetSynced() || len(msg.GetEvents()) > 0 {
			t.Fatalf("message %v while nothing changed, want a heartbeat", msg)
		}
	}
	if d := time.Since(start); d < 250*time.Millisecond || d > 5*time.Second {
		t.Errorf("3 heartbeats took %v, want about 300 ms", d)
	}

	// Publishing a path is an event naming it.
	file := mustPutNar(t, idx.client, nartest.Compress(t, compression.XZ, nartest.Small(t, 30)))
	sp := newStorePath("watched-1.0")
	mustPublish(t, idx.client, pathInfo(sp, file))
	ev := nextEvent(t, stream)
	if ev.GetKind() != indexv1.PathEventKind_PATH_EVENT_KIND_PUBLISHED || len(ev.GetHashParts()) != 1 || ev.GetHashParts()[0] != hashPart(sp) {
		t.Errorf("event %v, want published %s", ev, hashPart(sp))
	}
	// Publishing it again with nothing new changes nothing: no event, the
	// next message is a heartbeat.
	mustPublish(t, idx.client, pathInfo(sp, file))
	msg, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(msg.GetEvents()) != 0 {
		t.Errorf("publishing the same path again: events %v, want none", msg.GetEvents())
	}
}

// TestWatchPathsSlowWatcher: a watcher that does not read is cut off with
// RESOURCE_EXHAUSTED once it falls too far behind; publishing never waits
// for it, and another watcher keeps its stream.
func TestWatchPathsSlowWatcher(t *testing.T) {
	idx := startIndex(t, t.TempDir(), signerConn{fake: fakeSigner(t)})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	slow := watch(t, ctx, idx.client, time.Minute)
	fast := watch(t, ctx, idx.client, time.Minute)

	// Far more events than the gRPC flow-control windows and the watcher's
	// buffer hold, in rounds the fast watcher reads completely before the
	// next one. Each Publish returns at once whatever the slow one does.
	const n, round = 50000, 250
	progress := make(chan int, n)
	go func() {
		got := 0
		for got < n {
			msg, err := fast.Recv()
			if err != nil {
				t.Errorf("the fast watcher's stream ended after %d events: %v", got, err)
				close(progress)
				return
			}
			for _, ev := range msg.GetEvents() {
				got += len(ev.GetHashParts())
			}
			progress <- got
		}
	}()
	start := time.Now()
	got := 0
	for i := 0; i < n; i += round {
		for j := i; j < i+round; j++ {
			idx.cat.Changes().Publish(indexv1.PathEventKind_PATH_EVENT_KIND_REMOVED, fmt.Sprintf("%032d", j))
		}
		for got < i+round {
			var ok bool
			if got, ok = <-progress; !ok {
				t.Fatal("the fast watcher stopped")
			}
		}
	}
	t.Logf("published and received %d events in %v", n, time.Since(start))

	for {
		_, err := slow.Recv()
		if err == nil {
			continue
		}
		wantCode(t, err, codes.ResourceExhausted)
		break
	}
	if st := idx.cat.Changes().Stats(); st.Overflows != 1 || st.Watchers != 1 {
		t.Errorf("hub stats %+v, want 1 overflow and the fast watcher left", st)
	}
}

// noUpstream is an Upstream that has nothing.
type noUpstream struct{}

func (noUpstream) PathInfo(context.Context, string) (*indexv1.PathInfo, error) {
	return nil, status.Error(codes.NotFound, "not upstream either")
}

// TestWatchPathsWithUpstream: an index that looks misses up upstream
// tells its watchers not to cache its NOT_FOUND answers.
func TestWatchPathsWithUpstream(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	cat, err := catalog.Open(filepath.Join(t.TempDir(), "catalog.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer cat.Close()
	srv := grpc.NewServer()
	indexv1.RegisterIndexServiceServer(srv, server.New(log, cat, nil, nil, nil).WithUpstream(noUpstream{}))
	lis := bufconn.Listen(1 << 20)
	go srv.Serve(lis)
	defer srv.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := indexv1.NewIndexServiceClient(dialBuf(t, lis)).WatchPaths(ctx, &indexv1.WatchPathsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if !first.GetSynced() || first.GetCacheNotFound() {
		t.Errorf("first message %v, want synced with cache_not_found unset", first)
	}
}
