package admin

import (
	"context"
	"slices"
	"sort"
	"time"

	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/fault"
)

// Policy is what garbage collection keeps; a zero field sets no limit.
type Policy struct {
	// MaxSize bounds the bytes of NAR files kept.
	MaxSize uint64
	// MaxAge deletes paths not downloaded (or, never downloaded,
	// registered) for longer.
	MaxAge time.Duration
}

// victim is a path garbage collection deletes.
type victim struct {
	hashPart  string
	storePath string
	reason    string
	freed     uint64
}

// gcBatch is how many paths one catalogue transaction deletes.
const gcBatch = 100

// plan decides what garbage collection deletes, in the order to delete
// it, and how many bytes of NAR files stay. The dry run and the real run
// both follow it.
//
// A path's recency is the latest download of it or of any path that
// refers to it, directly or not (whoever downloads a referrer needs the
// path too); never downloaded counts as its registration time. Paths are
// taken least recent first, referrers before what they refer to (a
// referrer is never more recent than what it refers to, so it comes
// first). A path is deleted only if no path that refers to it is kept,
// it is not pinned nor in a pinned closure, and it is older than MaxAge
// or the NAR files kept exceed MaxSize. Local paths are never candidates:
// they are not in the snapshot of pushed paths.
func (g *graph) plan(p Policy, now time.Time) (victims []victim, kept uint64) {
	protected := map[string]bool{}
	for h, e := range g.snap.Paths {
		if e.Pin == nil {
			continue
		}
		if e.Pin.GetClosure() {
			for q := range g.closure(h) {
				protected[q] = true
			}
		}
		protected[h] = true
	}

	recency := map[string]int64{}
	var recent func(h string) int64
	recent = func(h string) int64 {
		if r, ok := recency[h]; ok {
			return r
		}
		e := g.snap.Paths[h]
		r := e.Access.Last
		if r == 0 {
			r = e.Info.GetRegistrationTime().AsTime().Unix()
		}
		recency[h] = r // guards against a (impossible) cycle
		for _, q := range g.referrers[h] {
			r = max(r, recent(q))
		}
		recency[h] = r
		return r
	}
	level := g.levels()
	order := make([]string, 0, len(g.snap.Paths))
	for h := range g.snap.Paths {
		recent(h)
		order = append(order, h)
	}
	sort.Slice(order, func(i, j int) bool {
		a, b := order[i], order[j]
		if recency[a] != recency[b] {
			return recency[a] < recency[b]
		}
		if level[a] != level[b] {
			return level[a] < level[b]
		}
		return a < b
	})

	users := map[string]int{}
	for _, e := range g.snap.Paths {
		nf := e.Info.GetFile()
		if nf.GetFileHash() == "" {
			continue
		}
		if users[nf.GetFileHash()] == 0 {
			kept += nf.GetFileSize()
		}
		users[nf.GetFileHash()]++
	}
	deadline := int64(0)
	if p.MaxAge > 0 {
		deadline = now.Add(-p.MaxAge).Unix()
	}
	deleted := map[string]bool{}
	for _, h := range order {
		if protected[h] {
			continue
		}
		referred := false
		for _, r := range g.referrers[h] {
			if !deleted[r] {
				referred = true
				break
			}
		}
		if referred {
			continue
		}
		var reason string
		switch {
		case p.MaxAge > 0 && recency[h] < deadline:
			reason = "age"
		case p.MaxSize > 0 && kept > p.MaxSize:
			reason = "size"
		default:
			continue
		}
		deleted[h] = true
		v := victim{hashPart: h, storePath: g.snap.Paths[h].Info.GetStorePath(), reason: reason}
		if nf := g.snap.Paths[h].Info.GetFile(); nf.GetFileHash() != "" {
			users[nf.GetFileHash()]--
			if users[nf.GetFileHash()] == 0 {
				v.freed = nf.GetFileSize()
				kept -= v.freed
			}
		}
		victims = append(victims, v)
	}
	return victims, kept
}

// CollectGarbage applies the retention policies, streaming each path
// deleted and a summary.
func (s *Service) CollectGarbage(req *indexv1.CollectGarbageRequest, stream indexv1.AdminService_CollectGarbageServer) error {
	p := Policy{MaxSize: s.cfg.GCMaxSize, MaxAge: s.cfg.GCMaxAge}
	if req.GetMaxTotalSize() > 0 {
		p.MaxSize = req.GetMaxTotalSize()
	}
	if d := req.GetMaxAge(); d != nil {
		if err := d.CheckValid(); err != nil {
			return fault.Status(fault.Invalid("max_age: %v", err))
		}
		if d.AsDuration() < 0 {
			return fault.Status(fault.Invalid("max_age %s is negative", d.AsDuration()))
		}
		p.MaxAge = d.AsDuration()
	}
	err := s.collect(stream.Context(), p, req.GetDryRun(), stream.Send)
	return fault.Status(err)
}

// collect runs garbage collection with p, calling send for each path
// deleted (or, with dryRun, that would be) and once more at the end.
func (s *Service) collect(ctx context.Context, p Policy, dryRun bool, send func(*indexv1.CollectGarbageResponse) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.tracker.Flush(); err != nil {
		return err
	}
	snap, err := s.cat.Snapshot(false)
	if err != nil {
		return err
	}
	victims, kept := newGraph(snap).plan(p, s.now())
	var total uint64
	deleted := 0
	for i := 0; i < len(victims); i += gcBatch {
		batch := victims[i:min(i+gcBatch, len(victims))]
		if !dryRun {
			// A path published since the plan may refer to a victim: the
			// catalogue keeps such victims (DeleteUnreferred), and they
			// are not reported.
			hashes := make([]string, len(batch))
			for j, v := range batch {
				hashes[j] = v.hashPart
			}
			gone, freed, err := s.cat.DeleteUnreferred(hashes)
			if err != nil {
				return err
			}
			s.removeFiles(ctx, freed)
			if len(gone) < len(batch) {
				done := map[string]bool{}
				for _, h := range gone {
					done[h] = true
				}
				batch = slices.DeleteFunc(slices.Clone(batch), func(v victim) bool { return !done[v.hashPart] })
			}
		}
		for _, v := range batch {
			total += v.freed
			deleted++
			err := send(&indexv1.CollectGarbageResponse{StorePath: v.storePath, Reason: v.reason, FreedBytes: v.freed,
				Deleted: uint64(deleted), TotalFreedBytes: total, KeptBytes: kept})
			if err != nil && dryRun {
				return err
			}
		}
	}
	if !dryRun && deleted > 0 {
		s.cfg.Log.InfoContext(ctx, "garbage collected", "deleted", deleted, "freed_bytes", total, "kept_bytes", kept,
			"max_size", p.MaxSize, "max_age", p.MaxAge)
	}
	return send(&indexv1.CollectGarbageResponse{Deleted: uint64(deleted), TotalFreedBytes: total, KeptBytes: kept, Done: true})
}

// RunGC collects garbage with the configured policies every interval
// until ctx is done.
func (s *Service) RunGC(ctx context.Context, interval time.Duration) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	p := Policy{MaxSize: s.cfg.GCMaxSize, MaxAge: s.cfg.GCMaxAge}
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			err := s.collect(ctx, p, false, func(*indexv1.CollectGarbageResponse) error { return nil })
			if err != nil && ctx.Err() == nil {
				s.cfg.Log.Warn("garbage collection", "err", err)
			}
		}
	}
}
