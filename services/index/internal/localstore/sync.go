package localstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nixcache/nixcache/nix/daemon"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/catalog"
)

const (
	// racyWindow: a change stamped less than this before the stat that saw
	// it may be followed, within the same mtime tick, by another that the
	// next stat cannot tell apart; the next poll syncs again.
	racyWindow = time.Second
	// fullResyncInterval: a sync runs at least this often, whatever the
	// stats say (a file system whose mtimes do not tell).
	fullResyncInterval = 10 * time.Minute
	// queryWorkers is how many QueryPathInfo calls a sync makes at once.
	queryWorkers = 4
	// maxSignBackoff bounds the wait between background signing attempts
	// while the signer is down.
	maxSignBackoff = 30 * time.Second
)

// SyncResult tells what one sync changed.
type SyncResult struct {
	Valid    int // valid paths in the store
	Added    int // paths catalogued
	Removed  int // paths dropped from the catalogue
	Unsigned int // of those added, how many the signer did not sign
}

// Run keeps the catalogue in step with the store until ctx is done: a sync
// at once, then a poll every SyncInterval (see the package comment). It
// returns nil when ctx ends.
func (s *Store) Run(ctx context.Context) error {
	tick := time.NewTicker(s.cfg.SyncInterval)
	defer tick.Stop()
	var w watch
	for {
		s.poll(ctx, &w)
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// watch is the state of Run between polls.
type watch struct {
	last     stamps    // what the stats said at the last successful sync
	synced   bool      // a sync has succeeded, and last is its stamps
	racy     bool      // last holds a change too recent to trust
	lastSync time.Time // of the last successful sync
	failing  bool      // the last sync failed (logged once, not every poll)

	signFailures int
	nextSign     time.Time
}

// poll syncs if the store may have changed, then signs what is unsigned.
func (s *Store) poll(ctx context.Context, w *watch) {
	now := s.now()
	st := s.stat()
	if !w.synced || w.racy || st != w.last || now.Sub(w.lastSync) >= fullResyncInterval {
		start := time.Now()
		res, err := s.Sync(ctx)
		switch {
		case err != nil && ctx.Err() != nil:
			return
		case err != nil:
			// Logged once as a warning, then at debug level while it lasts.
			level := slog.LevelWarn
			if w.failing {
				level = slog.LevelDebug
			}
			w.synced, w.failing = false, true
			s.cfg.Log.Log(ctx, level, "local store sync failed; retrying", "err", err)
		default:
			if w.failing {
				s.cfg.Log.Info("local store sync works again")
			}
			w.failing = false
			w.last, w.synced, w.lastSync = st, true, now
			w.racy = st.newest().After(now.Add(-racyWindow))
			if res.Added > 0 || res.Removed > 0 {
				s.cfg.Log.Info("local store synced", "valid", res.Valid, "added", res.Added,
					"removed", res.Removed, "unsigned", res.Unsigned, "duration", time.Since(start))
			}
		}
	}
	if now.Before(w.nextSign) {
		return
	}
	n, err := s.SignPending(ctx)
	if err != nil && ctx.Err() == nil {
		w.signFailures++
		w.nextSign = now.Add(min(maxSignBackoff, s.cfg.SyncInterval<<min(w.signFailures, 10)))
		s.cfg.Log.Warn("signing local paths failed; retrying", "err", err, "retry_in", w.nextSign.Sub(now))
		return
	}
	w.signFailures, w.nextSign = 0, time.Time{}
	if n > 0 {
		s.cfg.Log.Info("signed local paths", "paths", n)
	}
}

// stamp is what a stat says of a file: enough to notice that it changed.
type stamp struct {
	exists bool
	mtime  int64 // UnixNano
	size   int64
}

// stamps are those of the store directory, the database and its WAL.
type stamps [3]stamp

func (s *Store) stat() stamps {
	var st stamps
	for i, p := range []string{s.cfg.StoreDir, s.cfg.NixDB, s.cfg.NixDB + "-wal"} {
		if fi, err := os.Stat(p); err == nil {
			st[i] = stamp{exists: true, mtime: fi.ModTime().UnixNano(), size: fi.Size()}
		}
	}
	return st
}

func (st stamps) newest() time.Time {
	var n int64
	for _, s := range st {
		n = max(n, s.mtime)
	}
	return time.Unix(0, n)
}

// Sync brings the catalogue's local paths in step with the daemon's valid
// paths: new ones are queried, signed (or recorded unsigned when the
// signer fails) and recorded; recorded ones the daemon no longer has are
// dropped once the daemon confirms they are invalid.
func (s *Store) Sync(ctx context.Context) (SyncResult, error) {
	var res SyncResult
	all, err := s.daemon.QueryAllValidPaths(ctx)
	if err != nil {
		return res, fmt.Errorf("list valid paths: %w", err)
	}
	type entry struct{ hash, path string }
	entries := make([]entry, 0, len(all))
	for _, p := range all {
		if h := hashPartOf(s.cfg.StoreDir, p); h != "" {
			entries = append(entries, entry{h, p})
		}
	}
	all = nil //nolint:ineffassign // done with: says so to the reader (and to the GC, if the compiler did not)
	slices.SortFunc(entries, func(a, b entry) int { return strings.Compare(a.hash, b.hash) })
	entries = slices.CompactFunc(entries, func(a, b entry) bool { return a.hash == b.hash })
	res.Valid = len(entries)
	hashes := make([]string, len(entries))
	for i, e := range entries {
		hashes[i] = e.hash
	}
	missing, extra, err := s.cat.DiffLocal(hashes)
	if err != nil {
		return res, err
	}
	hashes = nil //nolint:ineffassign // done with, as all above

	for batch := range slices.Chunk(missing, signBatch) {
		paths := make([]string, len(batch))
		for i, j := range batch {
			paths[i] = entries[j].path
		}
		added, unsigned, err := s.add(ctx, paths)
		res.Added += added
		res.Unsigned += unsigned
		if err != nil {
			return res, err
		}
	}
	for batch := range slices.Chunk(extra, signBatch) {
		removed, err := s.remove(ctx, batch)
		res.Removed += removed
		if err != nil {
			return res, err
		}
	}
	return res, nil
}

// add queries, signs and records paths (at most signBatch), skipping
// those that became invalid meanwhile or that cannot be served.
func (s *Store) add(ctx context.Context, paths []string) (added, unsigned int, err error) {
	infos := make([]*indexv1.PathInfo, len(paths))
	errs := make([]error, len(paths))
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(queryWorkers, len(paths)) {
		wg.Go(func() {
			for i := range next {
				di, err := s.daemon.QueryPathInfo(ctx, paths[i])
				if err != nil {
					errs[i] = err
					continue
				}
				if infos[i], err = s.toPathInfo(di); err != nil {
					s.cfg.Log.Warn("local path cannot be served", "store_path", paths[i], "err", err)
				}
			}
		})
	}
	for i := range paths {
		next <- i
	}
	close(next)
	wg.Wait()
	for i, err := range errs {
		if err != nil && !errors.Is(err, daemon.ErrNotFound) {
			return 0, 0, fmt.Errorf("query path info of %s: %w", paths[i], err)
		}
	}
	infos = slices.DeleteFunc(infos, func(i *indexv1.PathInfo) bool { return i == nil })
	if len(infos) == 0 {
		return 0, 0, nil
	}
	signErr := s.sign(ctx, infos)
	if signErr != nil {
		if ctx.Err() != nil {
			return 0, 0, signErr
		}
		unsigned = len(infos)
		s.cfg.Log.Warn("recording local paths unsigned; they are served once signed", "paths", len(infos), "err", signErr)
	}
	recs := make([]catalog.LocalPath, len(infos))
	for i, info := range infos {
		recs[i] = catalog.LocalPath{Info: info, Signed: signErr == nil}
	}
	if err := s.cat.PutLocal(recs); err != nil {
		return 0, 0, err
	}
	s.appeared(infos)
	return len(infos), unsigned, nil
}

// remove drops the recorded paths with these hash parts that the daemon
// confirms are no longer valid.
func (s *Store) remove(ctx context.Context, hashParts []string) (int, error) {
	paths := make([]string, 0, len(hashParts))
	for _, h := range hashParts {
		info, _, err := s.cat.LocalPathInfo(h)
		if err != nil {
			continue // dropped meanwhile
		}
		paths = append(paths, info.GetStorePath())
	}
	if len(paths) == 0 {
		return 0, nil
	}
	valid, err := s.daemon.QueryValidPaths(ctx, paths)
	if err != nil {
		return 0, fmt.Errorf("confirm %d paths are gone: %w", len(paths), err)
	}
	stillValid := make(map[string]bool, len(valid))
	for _, p := range valid {
		stillValid[p] = true
	}
	var gone []string
	for _, p := range paths {
		if !stillValid[p] {
			gone = append(gone, hashPartOf(s.cfg.StoreDir, p))
		}
	}
	copies, quarantined, err := s.cat.DeleteLocal(gone)
	if err != nil {
		return 0, err
	}
	if s.copies != nil {
		s.copies.Forget(copies)
	}
	if len(quarantined) > 0 {
		// Pushed before the cache copied such references at publish.
		s.cfg.Log.Warn("quarantined pushed paths whose references the host's store no longer has; push them again",
			"paths", quarantined)
	}
	return len(gone), nil
}
