// Package drain pushes what the post-build hook queued in the spool: it
// polls the spool, pushes the queued paths' closures in one batch, and
// removes them from the queue only once they are in the cache. A failure
// (the cache down, a wrong token) keeps them queued, is logged and
// recorded in the spool for `nixcache status`, and is retried with
// backoff.
package drain

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nixcache/nixcache/cmd/nixcache/internal/cacheclient"
	"github.com/nixcache/nixcache/cmd/nixcache/internal/push"
	"github.com/nixcache/nixcache/cmd/nixcache/internal/spool"
)

// Config configures Run.
type Config struct {
	Spool  *spool.Spool
	Pusher *push.Pusher
	// PollInterval is how often an idle daemon looks at the spool.
	PollInterval time.Duration
	// Batch is the most queued paths pushed at once.
	Batch int
	// MinBackoff and MaxBackoff bound the wait after a failed push.
	MinBackoff, MaxBackoff time.Duration
	Log                    *slog.Logger
}

// Run drains the spool until ctx ends.
func Run(ctx context.Context, cfg Config) error {
	if cfg.Spool == nil || cfg.Pusher == nil || cfg.Log == nil || cfg.PollInterval <= 0 || cfg.Batch <= 0 {
		return errors.New("drain: spool, pusher, logger, poll interval and batch are required")
	}
	backoff := cfg.MinBackoff
	for {
		pushed, err := Once(ctx, cfg)
		wait := cfg.PollInterval
		switch {
		case ctx.Err() != nil:
			return nil //nolint:nilerr // stopping: the queue keeps what was not pushed
		case err != nil:
			cfg.Log.Error("push of the queue failed; the paths stay queued", "err", err, "retry_in", backoff)
			wait, backoff = backoff, min(backoff*2, cfg.MaxBackoff)
		case pushed > 0:
			wait, backoff = 0, cfg.MinBackoff
		default:
			backoff = cfg.MinBackoff
		}
		if wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil
			case <-t.C:
			}
		}
	}
}

// Once pushes one batch of the queue and returns how many entries it
// removed.
func Once(ctx context.Context, cfg Config) (int, error) {
	entries, err := cfg.Spool.Peek(cfg.Batch)
	if err != nil || len(entries) == 0 {
		return 0, err
	}
	roots := make([]string, 0, len(entries))
	seen := map[string]bool{}
	for _, e := range entries {
		if !seen[e.Path] {
			seen[e.Path] = true
			roots = append(roots, e.Path)
		}
	}
	valid, err := cfg.Pusher.ValidPaths(ctx, roots)
	if err != nil {
		return 0, err
	}
	if len(valid) < len(roots) {
		// Gone from the store (collected, or never built): nothing to
		// push, and keeping them would block the queue.
		ok := map[string]bool{}
		for _, p := range valid {
			ok[p] = true
		}
		for _, p := range roots {
			if !ok[p] {
				cfg.Log.Warn("queued path is not valid in the local store; dropped from the queue", "path", p)
			}
		}
		roots = valid
	}
	res, err := cfg.Pusher.Push(ctx, roots)
	if err != nil && cacheclient.MayRefuseSome(err) && len(roots) > 1 && ctx.Err() == nil {
		// The cache refuses some path (or the token may push only some
		// names): push the roots one by one, so that one the cache will
		// never take does not hold the others up. What the batch uploaded
		// is not uploaded again.
		return oneByOne(ctx, cfg, entries, roots, err)
	}
	if err != nil {
		if ctx.Err() != nil {
			return 0, nil //nolint:nilerr // stopping; the queue is as it was
		}
		if ferr := cfg.Spool.Failed(err, time.Now()); ferr != nil {
			cfg.Log.Error("record the failure in the spool", "err", ferr)
		}
		return 0, fmt.Errorf("push %d queued paths: %w", len(roots), err)
	}
	if err := cfg.Spool.Done(entries, time.Now()); err != nil {
		return 0, err
	}
	cfg.Log.Info("pushed queued paths", "queued", len(entries), "closure", res.Closure, "present", res.Present,
		"skipped", res.Skipped, "uploaded", res.Uploaded, "nar_bytes", res.NarBytes, "file_bytes", res.FileBytes,
		"duration", res.Duration)
	return len(entries), nil
}

// oneByOne pushes each root alone, removes the entries of those pushed,
// and records the failure of the others, which stay queued.
func oneByOne(ctx context.Context, cfg Config, entries []spool.Entry, roots []string, batchErr error) (int, error) {
	var pushed []spool.Entry
	var firstErr error
	failed := 0
	for _, root := range roots {
		if _, err := cfg.Pusher.Push(ctx, []string{root}); err != nil {
			if ctx.Err() != nil {
				break
			}
			failed++
			if firstErr == nil {
				firstErr = fmt.Errorf("%s: %w", root, err)
			}
			continue
		}
		for _, e := range entries {
			if e.Path == root {
				pushed = append(pushed, e)
			}
		}
	}
	if len(pushed) > 0 {
		if err := cfg.Spool.Done(pushed, time.Now()); err != nil {
			return 0, err
		}
		cfg.Log.Info("pushed queued paths one by one after a refusal", "pushed", len(pushed), "failed", failed)
	}
	if firstErr == nil {
		if ctx.Err() != nil {
			return len(pushed), nil //nolint:nilerr // stopping: what was pushed is dequeued, the rest stays
		}
		firstErr = batchErr
	}
	if failed > 0 || len(pushed) == 0 {
		if ferr := cfg.Spool.Failed(firstErr, time.Now()); ferr != nil {
			cfg.Log.Error("record the failure in the spool", "err", ferr)
		}
		return len(pushed), fmt.Errorf("push queued paths: %d refused; first: %w", failed, firstErr)
	}
	return len(pushed), nil
}
