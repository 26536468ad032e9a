// Package storewatch pushes every path that becomes valid in the host's
// store. Nix's database is only stat'ed (with its write-ahead log) to
// notice a change cheaply; then the daemon lists the valid paths, and
// those not seen before are pushed. Paths valid when the watch starts are
// not pushed (push them once with `nixcache push`).
package storewatch

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"slices"
	"time"

	"github.com/nixcache/nixcache/cmd/nixcache/internal/push"
)

// Config configures Run.
type Config struct {
	Pusher *push.Pusher
	// NixDB is Nix's database, e.g. /nix/var/nix/db/db.sqlite.
	NixDB string
	// PollInterval is how often the database is stat'ed.
	PollInterval time.Duration
	// MinBackoff and MaxBackoff bound the wait after a failed push.
	MinBackoff, MaxBackoff time.Duration
	Log                    *slog.Logger
	// Started, when set, is called once the paths valid at the start are
	// known: what becomes valid after it is pushed.
	Started func()
}

// stamp is what stats of the database say: enough to notice a change.
type stamp struct {
	mtime time.Time
	size  int64
}

func stampsOf(db string) [2]stamp {
	var s [2]stamp
	for i, p := range []string{db, db + "-wal"} {
		if fi, err := os.Stat(p); err == nil {
			s[i] = stamp{fi.ModTime(), fi.Size()}
		}
	}
	return s
}

// Run watches the store until ctx ends.
func Run(ctx context.Context, cfg Config) error {
	if cfg.Pusher == nil || cfg.Log == nil || cfg.NixDB == "" || cfg.PollInterval <= 0 {
		return errors.New("storewatch: pusher, logger, database and poll interval are required")
	}
	last := stampsOf(cfg.NixDB)
	all, err := cfg.Pusher.AllValidPaths(ctx)
	if err != nil {
		return err
	}
	known := make(map[string]bool, len(all))
	for _, p := range all {
		known[p] = true
	}
	cfg.Log.Info("watching the store", "db", cfg.NixDB, "valid_paths", len(known))
	if cfg.Started != nil {
		cfg.Started()
	}
	var pending []string // new paths not pushed yet
	backoff := cfg.MinBackoff
	retryAt := time.Time{}
	t := time.NewTicker(cfg.PollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		// A change within the mtime's resolution of the last look is
		// caught by the next: the stamps are taken before listing.
		if now := stampsOf(cfg.NixDB); now != last {
			all, err := cfg.Pusher.AllValidPaths(ctx)
			if err != nil {
				cfg.Log.Error("list the store's paths", "err", err)
				continue
			}
			last = now
			for _, p := range all {
				if !known[p] {
					known[p] = true
					pending = append(pending, p)
				}
			}
		}
		if len(pending) == 0 || time.Now().Before(retryAt) {
			continue
		}
		res, err := cfg.Pusher.Push(ctx, pending)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			// Paths collected since are dropped; the others stay.
			valid, verr := cfg.Pusher.ValidPaths(ctx, pending)
			if verr == nil {
				pending = slices.Clip(valid)
			}
			cfg.Log.Error("push new store paths; they stay pending", "paths", len(pending), "err", err, "retry_in", backoff)
			retryAt = time.Now().Add(backoff)
			backoff = min(backoff*2, cfg.MaxBackoff)
			continue
		}
		cfg.Log.Info("pushed new store paths", "paths", len(pending), "closure", res.Closure, "present", res.Present,
			"uploaded", res.Uploaded, "nar_bytes", res.NarBytes, "duration", res.Duration)
		pending, backoff, retryAt = nil, cfg.MinBackoff, time.Time{}
	}
}
