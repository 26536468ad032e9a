package httpapi

import (
	"container/list"
	"sync"
	"time"
)

// narinfoCacheEntries bounds the narinfo cache. A rendered narinfo is
// typically 0.5–2 KiB, so a full cache holds a few tens of MiB at most; with
// a TTL of seconds it rarely holds more than the paths asked for in the
// last TTL.
const narinfoCacheEntries = 16384

// narinfoCache keeps rendered narinfos of published paths for a short TTL,
// so that repeated lookups skip the index hop. It is bounded in entries
// (least recently used go first) and in staleness: an answer is served at
// most ttl after the index gave it, so a path deleted, collected or
// quarantined stops being served by this gateway within ttl. Only
// successful answers are cached (no negative caching): a path pushed
// after a 404 is found on the next lookup.
type narinfoCache struct {
	ttl time.Duration
	max int
	now func() time.Time

	mu    sync.Mutex
	order *list.List // of *narinfoEntry, most recently used first
	items map[string]*list.Element
}

type narinfoEntry struct {
	hash    string
	body    string
	expires time.Time
}

// newNarinfoCache returns a cache of at most max entries, each served for
// ttl; nil (caching off) when ttl or max is not positive.
func newNarinfoCache(ttl time.Duration, max int) *narinfoCache {
	if ttl <= 0 || max <= 0 {
		return nil
	}
	return &narinfoCache{ttl: ttl, max: max, now: time.Now, order: list.New(), items: map[string]*list.Element{}}
}

// get returns the cached narinfo of the store path with hash part hash.
func (c *narinfoCache) get(hash string) (string, bool) {
	if c == nil {
		return "", false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.items[hash]
	if !ok {
		return "", false
	}
	e := el.Value.(*narinfoEntry)
	if !c.now().Before(e.expires) {
		c.order.Remove(el)
		delete(c.items, hash)
		return "", false
	}
	c.order.MoveToFront(el)
	return e.body, true
}

// put caches body as the narinfo of hash for the cache's TTL.
func (c *narinfoCache) put(hash, body string) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	expires := c.now().Add(c.ttl)
	if el, ok := c.items[hash]; ok {
		e := el.Value.(*narinfoEntry)
		e.body, e.expires = body, expires
		c.order.MoveToFront(el)
		return
	}
	c.items[hash] = c.order.PushFront(&narinfoEntry{hash: hash, body: body, expires: expires})
	for c.order.Len() > c.max {
		oldest := c.order.Back()
		c.order.Remove(oldest)
		delete(c.items, oldest.Value.(*narinfoEntry).hash)
	}
}

// forget drops the narinfo of hash, e.g. when it is pushed again.
func (c *narinfoCache) forget(hash string) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[hash]; ok {
		c.order.Remove(el)
		delete(c.items, hash)
	}
}
