package httpapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
)

// The index watch's timing.
const (
	// WatchHeartbeat is how often the index is asked to say something on
	// a quiet watch stream.
	WatchHeartbeat = time.Second
	// WatchTimeout is how long the stream may be silent before the
	// gateway takes it for stalled: it cuts it, drops its cache and
	// watches again. It bounds how long a path may be served after its
	// change when events stop arriving without the stream ending.
	WatchTimeout = 3 * WatchHeartbeat
	// watchRetryMin and watchRetryMax bound the wait before watching
	// again after the stream ended (doubling from the first).
	watchRetryMin = 100 * time.Millisecond
	watchRetryMax = 2 * time.Second
)

// WatchIndex keeps the narinfo and NAR source caches in step with the
// index until ctx ends: it watches the index's changes
// (IndexService.WatchPaths), drops the answers for every path reported
// changed (and every NAR source when a path is removed), and while the
// stream is in sync lets answers live NarinfoCacheMaxAge; the token
// answers of Tokens are dropped on every TOKENS_CHANGED event. Whenever the
// stream ends or stalls it drops both caches, falls back to
// NarinfoCacheTTL (NAR sources are not kept then), and watches again. It returns at once when
// NarinfoCacheMaxAge is 0.
func (h *Handler) WatchIndex(ctx context.Context) {
	c := h.narinfos
	if c == nil || c.maxAge <= 0 {
		return
	}
	wait := watchRetryMin
	quiet := false // a failure was logged; later ones at debug until in sync
	for {
		synced, err := h.watchOnce(ctx)
		c.setLive(false, false)
		h.narSources.setLive(false)
		h.Tokens.setLive(false)
		if ctx.Err() != nil {
			return
		}
		if synced {
			wait, quiet = watchRetryMin, false
		}
		level := slog.LevelWarn
		if quiet {
			level = slog.LevelDebug
		}
		quiet = true
		h.Log.Log(ctx, level, "index watch lost: narinfo cache dropped, entries live -narinfo-cache-ttl until it is back",
			"err", err, "retry_in", wait)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		wait = min(2*wait, watchRetryMax)
	}
}

// watchOnce follows one WatchPaths stream until it ends, stalls for
// WatchTimeout, or ctx ends; it reports whether it got in sync.
func (h *Handler) watchOnce(ctx context.Context) (synced bool, err error) {
	c := h.narinfos
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var stalled atomic.Bool
	timer := time.AfterFunc(WatchTimeout, func() { stalled.Store(true); cancel() })
	defer timer.Stop()
	stream, err := h.Index.WatchPaths(ctx, &indexv1.WatchPathsRequest{HeartbeatInterval: durationpb.New(WatchHeartbeat)})
	if err != nil {
		return false, fmt.Errorf("watch index: %w", err)
	}
	for {
		msg, err := stream.Recv()
		if err != nil {
			if stalled.Load() {
				return synced, fmt.Errorf("watch index: nothing received for %v", WatchTimeout)
			}
			return synced, fmt.Errorf("watch index: %w", err)
		}
		timer.Reset(WatchTimeout)
		if msg.GetSynced() {
			if synced {
				return true, errors.New("watch index: a second synced marker")
			}
			synced = true
			c.setLive(true, msg.GetCacheNotFound())
			h.narSources.setLive(true)
			h.Tokens.setLive(true)
			h.Log.InfoContext(ctx, "index watch in sync: narinfos cached up to -narinfo-cache-max-age", "max_age", c.maxAge,
				"cache_not_found", msg.GetCacheNotFound())
		}
		if len(msg.GetEvents()) > 0 && !synced {
			return false, errors.New("watch index: events before the synced marker")
		}
		for _, ev := range msg.GetEvents() {
			switch ev.GetKind() {
			case indexv1.PathEventKind_PATH_EVENT_KIND_TOKENS_CHANGED:
				h.Tokens.drop()
				continue
			case indexv1.PathEventKind_PATH_EVENT_KIND_CHANGED:
			case indexv1.PathEventKind_PATH_EVENT_KIND_PUBLISHED:
				h.narSources.published(ev.GetHashParts())
			default:
				// Removed, or a kind newer than this gateway: a NAR
				// source kept may be gone.
				h.narSources.removed()
			}
			c.invalidate(ev.GetHashParts()...)
			c.watchEvents.Add(uint64(len(ev.GetHashParts())))
		}
	}
}
