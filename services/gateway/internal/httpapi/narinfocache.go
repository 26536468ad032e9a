package httpapi

import (
	"container/list"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// narinfoEntryOverhead is what an entry costs beyond its narinfo (or 404
// message) and hash: the entry, its list element, its map slot, the
// Content-Length header. TestNarinfoCacheMemory checks it against the heap.
const narinfoEntryOverhead = 320

// narinfoCache keeps rendered narinfos, and while the index's watch stream
// is in sync also the 404s, so that repeated lookups skip the index hop.
// It is bounded in bytes (least recently used go first) and in staleness:
//
//   - While the watch is in sync (live), an entry lives maxAge, and every
//     change the index reports drops the entries of its paths: a path
//     deleted, collected or quarantined stops being served as soon as its
//     event arrives. Events that raced with a lookup in flight keep that
//     lookup's answer out of the cache. 404s are cached too, unless the
//     index said its absences may end without an event (upstreams).
//   - Otherwise (no watch, or it is down) only found paths are cached,
//     each for ttl after the index gave it; 0 caches nothing then.
//
// Every change of state (in sync, lost) drops every entry: what was cached
// before may have missed events.
type narinfoCache struct {
	ttl      time.Duration
	maxAge   time.Duration
	maxBytes int64
	now      func() time.Time

	mu    sync.Mutex
	order *list.List // of *narinfoEntry, most recently used first
	items map[string]*list.Element
	bytes int64
	live  bool
	// negatives: 404s are cached while live (the index's absences end
	// only with a published event).
	negatives bool
	epoch     uint64                  // bumped at every change of state
	pending   map[string]*narinfoFill // lookups in flight, by hash part

	hits, misses                                    atomic.Uint64
	evictedSize, evictedExpired, evictedInvalidated atomic.Uint64
	evictedDropped                                  atomic.Uint64
	watchUp                                         atomic.Bool
	watchSyncs, watchEvents                         atomic.Uint64
}

// narinfoEntry is one cached answer. It is never changed once cached, so
// a reader may use it after the lock is released.
type narinfoEntry struct {
	hash  string
	found bool
	// body is the rendered narinfo, or the 404 message.
	body string
	// length is the Content-Length header of body.
	length  []string
	expires time.Time
	size    int64
}

// narinfoFill is the state of the lookups in flight for one hash part.
type narinfoFill struct {
	n     int  // lookups in flight
	stale bool // a change of the path was reported meanwhile
}

// fillToken is what begin hands a lookup, for finish.
type fillToken struct {
	hash  string
	fill  *narinfoFill
	epoch uint64
}

// newNarinfoCache returns a cache of at most maxBytes, its entries served
// for ttl, or maxAge while the watch is in sync; nil (caching off) when
// both are 0 or maxBytes is not positive.
func newNarinfoCache(ttl, maxAge time.Duration, maxBytes int64) *narinfoCache {
	if ttl <= 0 && maxAge <= 0 || maxBytes <= 0 {
		return nil
	}
	return &narinfoCache{ttl: ttl, maxAge: maxAge, maxBytes: maxBytes, now: time.Now,
		order: list.New(), items: map[string]*list.Element{}, pending: map[string]*narinfoFill{}}
}

// get returns the cached answer for the store path with hash part hash.
func (c *narinfoCache) get(hash string) (*narinfoEntry, bool) {
	if c == nil {
		return nil, false
	}
	c.mu.Lock()
	el, ok := c.items[hash]
	if !ok {
		c.mu.Unlock()
		c.misses.Add(1)
		return nil, false
	}
	e := el.Value.(*narinfoEntry)
	if !c.now().Before(e.expires) {
		c.remove(el)
		c.mu.Unlock()
		c.evictedExpired.Add(1)
		c.misses.Add(1)
		return nil, false
	}
	c.order.MoveToFront(el)
	c.mu.Unlock()
	c.hits.Add(1)
	return e, true
}

// begin is called before a lookup of hash asks the index; finish after.
func (c *narinfoCache) begin(hash string) fillToken {
	if c == nil {
		return fillToken{}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	f := c.pending[hash]
	if f == nil {
		f = &narinfoFill{}
		c.pending[hash] = f
	}
	f.n++
	return fillToken{hash: hash, fill: f, epoch: c.epoch}
}

// finish ends the lookup of tok and caches its answer: body is the
// narinfo when found, else the 404 message; a lookup that failed
// otherwise calls abandon instead. The answer is cached only if nothing
// may have changed it since begin: no change reported for the path, no
// change of state.
func (c *narinfoCache) finish(tok fillToken, found bool, body string) {
	if c == nil {
		return
	}
	size := int64(len(body)+len(tok.hash)) + narinfoEntryOverhead
	e := &narinfoEntry{hash: tok.hash, found: found, body: body, length: []string{strconv.Itoa(len(body))}, size: size}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.done(tok)
	if tok.fill.stale || tok.epoch != c.epoch || size > c.maxBytes {
		return
	}
	switch {
	case c.live && c.maxAge > 0 && (found || c.negatives):
		e.expires = c.now().Add(c.maxAge)
	case found && c.ttl > 0:
		e.expires = c.now().Add(c.ttl)
	default:
		return
	}
	if el, ok := c.items[tok.hash]; ok {
		c.remove(el)
	}
	c.items[tok.hash] = c.order.PushFront(e)
	c.bytes += size
	for c.bytes > c.maxBytes {
		c.remove(c.order.Back())
		c.evictedSize.Add(1)
	}
}

// abandon ends the lookup of tok without caching anything.
func (c *narinfoCache) abandon(tok fillToken) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.done(tok)
}

func (c *narinfoCache) done(tok fillToken) {
	if tok.fill.n--; tok.fill.n == 0 {
		delete(c.pending, tok.hash)
	}
}

// invalidate drops the answers for these hash parts, and keeps those of
// the lookups in flight for them out of the cache: the paths changed.
func (c *narinfoCache) invalidate(hashes ...string) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, h := range hashes {
		if el, ok := c.items[h]; ok {
			c.remove(el)
			c.evictedInvalidated.Add(1)
		}
		if f := c.pending[h]; f != nil {
			f.stale = true
		}
	}
}

// setLive drops every entry and says whether the watch is in sync: from
// now on, entries live maxAge (live; 404s too when negatives) or ttl.
// Saying again that it is not (another failed attempt to watch) changes
// nothing: what was cached since is cached by the TTL rule.
func (c *narinfoCache) setLive(live, negatives bool) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !live && !c.live {
		return
	}
	c.evictedDropped.Add(uint64(c.order.Len()))
	c.order.Init()
	clear(c.items)
	c.bytes = 0
	c.live, c.negatives = live, live && negatives
	c.epoch++
	c.watchUp.Store(live)
	if live {
		c.watchSyncs.Add(1)
	}
}

// remove drops el; the caller holds the lock.
func (c *narinfoCache) remove(el *list.Element) {
	e := c.order.Remove(el).(*narinfoEntry)
	delete(c.items, e.hash)
	c.bytes -= e.size
}

// NarinfoCacheStats are the narinfo cache's counters and the state of the
// index watch, for the metrics.
type NarinfoCacheStats struct {
	Enabled      bool
	Entries      int
	Bytes        int64
	Hits, Misses uint64
	// Evicted counts entries dropped, by reason: "size" (least recently
	// used, to stay within the size), "expired", "invalidated" (the path
	// changed, or was pushed through this gateway), "dropped" (every entry,
	// when the watch got in sync or was lost).
	Evicted map[string]uint64
	// WatchUp is whether the index watch is in sync; WatchSyncs counts the
	// times it got in sync (the first subscription and every
	// resubscription); WatchEvents the hash parts it reported changed.
	WatchUp                 bool
	WatchSyncs, WatchEvents uint64
}

// NarinfoCacheStats reads the narinfo cache's counters.
func (h *Handler) NarinfoCacheStats() NarinfoCacheStats { return h.narinfos.stats() }

func (c *narinfoCache) stats() NarinfoCacheStats {
	if c == nil {
		return NarinfoCacheStats{Evicted: map[string]uint64{}}
	}
	c.mu.Lock()
	n, b := c.order.Len(), c.bytes
	c.mu.Unlock()
	return NarinfoCacheStats{
		Enabled: true, Entries: n, Bytes: b, Hits: c.hits.Load(), Misses: c.misses.Load(),
		Evicted: map[string]uint64{
			"size": c.evictedSize.Load(), "expired": c.evictedExpired.Load(),
			"invalidated": c.evictedInvalidated.Load(), "dropped": c.evictedDropped.Load(),
		},
		WatchUp: c.watchUp.Load(), WatchSyncs: c.watchSyncs.Load(), WatchEvents: c.watchEvents.Load(),
	}
}
