package server

import (
	"errors"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/pathwatch"
)

// Heartbeat intervals of WatchPaths: the default, and the bounds a
// request's is clamped to.
const (
	defaultHeartbeat = time.Second
	minHeartbeat     = 100 * time.Millisecond
	maxHeartbeat     = time.Minute
)

// maxEventsPerMessage bounds how many buffered events one WatchPaths
// message carries (each at most pathwatch.MaxHashParts hash parts).
const maxEventsPerMessage = 64

// WatchPaths streams the catalogue's changes: the synced marker first,
// then the events as they are published, and a heartbeat whenever an
// interval passes with nothing to send.
func (s *Server) WatchPaths(req *indexv1.WatchPathsRequest, stream indexv1.IndexService_WatchPathsServer) error {
	ctx := stream.Context()
	interval := defaultHeartbeat
	if d := req.GetHeartbeatInterval(); d != nil && d.AsDuration() != 0 {
		interval = min(max(d.AsDuration(), minHeartbeat), maxHeartbeat)
	}
	// Subscribed before the marker is sent: nothing committed after the
	// watcher reads the marker is missed.
	w := s.catalog.Changes().Subscribe()
	defer w.Close()
	// A path the index lacks may be found upstream on the next lookup,
	// with no event before: then absences are not the watcher's to cache.
	if err := stream.Send(&indexv1.WatchPathsResponse{Synced: true, CacheNotFound: s.upstream == nil}); err != nil {
		return err
	}
	s.log.DebugContext(ctx, "path watcher subscribed", "heartbeat", interval)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		var msg indexv1.WatchPathsResponse
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-w.Done():
			return watchStatus(w.Err())
		case ev := <-w.Events():
			msg.Events = append(msg.Events, ev)
		case <-tick.C:
		}
		// Whatever else is buffered goes in the same message.
		for len(msg.Events) < maxEventsPerMessage && len(w.Events()) > 0 {
			msg.Events = append(msg.Events, <-w.Events())
		}
		if err := stream.Send(&msg); err != nil {
			return err
		}
		tick.Reset(interval)
	}
}

// watchStatus is the status a watcher's stream ends with when the hub
// cuts it off.
func watchStatus(err error) error {
	switch {
	case errors.Is(err, pathwatch.ErrOverflow):
		return status.Errorf(codes.ResourceExhausted, "%v: watch again and assume every change was missed", err)
	case errors.Is(err, pathwatch.ErrReset):
		return status.Errorf(codes.Aborted, "%v: watch again and assume every change was missed", err)
	default:
		return status.Errorf(codes.Unavailable, "%v", err)
	}
}
