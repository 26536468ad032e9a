package httpapi

import (
	"sync"
	"sync/atomic"
	"time"

	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
)

// DefaultNarSourceCacheEntries bounds the NAR source cache: about 500
// bytes an entry (a file's record and name, or a host path's name, NAR
// hash and size), so some 16 MiB at most (TestNarSourceCacheMemory). A
// miss costs one index call.
const DefaultNarSourceCacheEntries = 1 << 15

// narSourceCache remembers where a co-located gateway reads NARs from, as
// the index said: its StatNar answers for the files sent from -nar-dir
// (by file hash), and its GetPathInfo answers for the host's paths dumped
// from -local-store-dir (by "store:" and hash part). A download then costs
// no index round trip, while the index's authority over what is served is
// kept by the same watch stream that keeps the narinfo cache (WatchIndex):
//
//   - Answers are kept only while the watch is in sync, each for maxAge.
//   - Any path the index reports removed (deleted, collected, quarantined,
//     gone from the host's store) drops every entry: the event names
//     store paths, not files, and removals are rare next to downloads. A
//     lookup in flight across such an event is not kept (epoch).
//   - A path published drops its own entry: a push of a host path
//     shadows it (its NAR then comes from the pushed file).
//   - Losing the watch, or getting in sync again, drops every entry.
//
// A kept answer is still checked against the disk on every download (the
// file must be there, regular, of the recorded size; the host path must
// be there), and a miss there falls back to the index's stream, which
// answers with its current view.
type narSourceCache struct {
	maxAge time.Duration
	// half is how many entries a generation holds: a full one becomes
	// the old one, and the old one is dropped.
	half int
	now  func() time.Time

	mu       sync.Mutex
	cur, old map[string]narSource // by sourceKey
	live     bool
	epoch    uint64 // bumped whenever entries are dropped for a change

	hits, misses atomic.Uint64
}

// narSource is what the index said of one NAR's source: a stored file
// (StatNar) or a path of the host's store (GetPathInfo).
type narSource struct {
	file    *indexv1.NarFile
	rel     string            // the file's relative_path under NarDir
	info    *indexv1.PathInfo // the host path's store path, NAR hash and size
	expires time.Time
}

// storeKey is the cache key of the host path with hash part hash; a file's
// is its hash as the URL names it ("sha256:<nix32>").
func storeKey(hash string) string { return "store:" + hash }

// newNarSourceCache returns a cache of up to maxEntries answers kept for
// maxAge; nil (no caching) when either is not positive.
func newNarSourceCache(maxAge time.Duration, maxEntries int) *narSourceCache {
	if maxAge <= 0 || maxEntries <= 0 {
		return nil
	}
	return &narSourceCache{maxAge: maxAge, half: max(1, maxEntries/2), now: time.Now,
		cur: map[string]narSource{}, old: map[string]narSource{}}
}

// get returns the kept answer for key.
func (c *narSourceCache) get(key string) (narSource, bool) {
	if c == nil {
		return narSource{}, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.cur[key]
	if !ok {
		if e, ok = c.old[key]; ok {
			delete(c.old, key)
			c.put(key, e)
		}
	}
	if ok && !c.now().Before(e.expires) {
		delete(c.cur, key)
		ok = false
	}
	if !ok {
		c.misses.Add(1)
		return narSource{}, false
	}
	c.hits.Add(1)
	return e, true
}

// begin is called before asking the index; the token goes to finish.
func (c *narSourceCache) begin() uint64 {
	if c == nil {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.epoch
}

// finish keeps the index's answer for key, unless the watch is not in
// sync or something was removed (or key's path published) since begin
// gave epoch.
func (c *narSourceCache) finish(epoch uint64, key string, e narSource) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.live || epoch != c.epoch {
		return
	}
	e.expires = c.now().Add(c.maxAge)
	c.put(key, e)
}

// put adds e to the current generation; the caller holds the lock.
func (c *narSourceCache) put(key string, e narSource) {
	if len(c.cur) >= c.half {
		c.old, c.cur = c.cur, make(map[string]narSource, c.half)
	}
	c.cur[key] = e
}

// forget drops the answer for key, which the disk contradicted.
func (c *narSourceCache) forget(key string) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.cur, key)
	delete(c.old, key)
}

// published drops the answers for host paths that were published: a
// pushed path shadows the host's. A lookup in flight is not kept either.
func (c *narSourceCache) published(hashes []string) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, h := range hashes {
		delete(c.cur, storeKey(h))
		delete(c.old, storeKey(h))
	}
	c.epoch++
}

// removed drops every answer: the index removed a path, whose file (or
// host path) may be one of them.
func (c *narSourceCache) removed() {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dropAll()
}

// setLive drops every answer and says whether the watch is in sync.
func (c *narSourceCache) setLive(live bool) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dropAll()
	c.live = live
}

// dropAll empties the cache; the caller holds the lock.
func (c *narSourceCache) dropAll() {
	clear(c.cur)
	clear(c.old)
	c.epoch++
}

// len is the number of answers kept.
func (c *narSourceCache) len() int {
	if c == nil {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.cur) + len(c.old)
}
