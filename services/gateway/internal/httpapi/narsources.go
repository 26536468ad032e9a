package httpapi

import (
	"sync"
	"sync/atomic"
	"time"

	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
)

// DefaultNarFileCacheEntries bounds the NAR file cache: about 200 bytes an
// entry, so some 13 MiB at most.
const DefaultNarFileCacheEntries = 1 << 16

// narFileCache remembers the index's answers to StatNar for the files a
// co-located gateway sends from -nar-dir, so that a download costs no
// index round trip: the index's authority over what is served is kept by
// the same watch stream that keeps the narinfo cache (WatchIndex).
//
//   - Answers are kept only while the watch is in sync, each for maxAge.
//   - Any path the index reports removed (deleted, collected, quarantined)
//     drops every entry: the event names store paths, not files, and
//     removals are rare next to downloads. A StatNar in flight across
//     such an event is not kept (epoch).
//   - Losing the watch, or getting in sync again, drops every entry.
//
// A kept answer is still checked against the disk on every download
// (openNarFile: the file must be there, regular, of the recorded size),
// and a miss there falls back to the index's stream, which answers with
// its current view.
type narFileCache struct {
	maxAge time.Duration
	// half is how many entries a generation holds: a full one becomes
	// the old one, and the old one is dropped.
	half int
	now  func() time.Time

	mu       sync.Mutex
	cur, old map[string]narFileEntry // by the file hash as URLs name it
	live     bool
	epoch    uint64 // bumped whenever entries are dropped for a change

	hits, misses atomic.Uint64
}

// narFileEntry is what StatNar said of one file.
type narFileEntry struct {
	file    *indexv1.NarFile
	rel     string // relative_path under NarDir
	expires time.Time
}

// newNarFileCache returns a cache of up to maxEntries answers kept for
// maxAge; nil (no caching) when either is not positive.
func newNarFileCache(maxAge time.Duration, maxEntries int) *narFileCache {
	if maxAge <= 0 || maxEntries <= 0 {
		return nil
	}
	return &narFileCache{maxAge: maxAge, half: max(1, maxEntries/2), now: time.Now,
		cur: map[string]narFileEntry{}, old: map[string]narFileEntry{}}
}

// get returns the kept answer for fileHash.
func (c *narFileCache) get(fileHash string) (narFileEntry, bool) {
	if c == nil {
		return narFileEntry{}, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.cur[fileHash]
	if !ok {
		if e, ok = c.old[fileHash]; ok {
			delete(c.old, fileHash)
			c.put(fileHash, e)
		}
	}
	if ok && !c.now().Before(e.expires) {
		delete(c.cur, fileHash)
		ok = false
	}
	if !ok {
		c.misses.Add(1)
		return narFileEntry{}, false
	}
	c.hits.Add(1)
	return e, true
}

// begin is called before asking the index; the token goes to finish.
func (c *narFileCache) begin() uint64 {
	if c == nil {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.epoch
}

// finish keeps the index's answer for fileHash, unless the watch is not
// in sync or something was removed since begin gave epoch.
func (c *narFileCache) finish(epoch uint64, fileHash string, resp *indexv1.StatNarResponse) {
	if c == nil || resp.GetRelativePath() == "" {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.live || epoch != c.epoch {
		return
	}
	c.put(fileHash, narFileEntry{file: resp.GetFile(), rel: resp.GetRelativePath(), expires: c.now().Add(c.maxAge)})
}

// put adds e to the current generation; the caller holds the lock.
func (c *narFileCache) put(fileHash string, e narFileEntry) {
	if len(c.cur) >= c.half {
		c.old, c.cur = c.cur, make(map[string]narFileEntry, c.half)
	}
	c.cur[fileHash] = e
}

// forget drops the answer for one file, which the disk contradicted.
func (c *narFileCache) forget(fileHash string) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.cur, fileHash)
	delete(c.old, fileHash)
}

// removed drops every answer: the index removed a path, whose file may be
// one of them.
func (c *narFileCache) removed() {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dropAll()
}

// setLive drops every answer and says whether the watch is in sync.
func (c *narFileCache) setLive(live bool) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dropAll()
	c.live = live
}

// dropAll empties the cache; the caller holds the lock.
func (c *narFileCache) dropAll() {
	clear(c.cur)
	clear(c.old)
	c.epoch++
}

// len is the number of answers kept.
func (c *narFileCache) len() int {
	if c == nil {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.cur) + len(c.old)
}
