package httpapi

import (
	"fmt"
	"log/slog"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/nixcache/nixcache/platform/auth"
)

// clock is a settable time for the cache.
type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func newTestCache(ttl, maxAge time.Duration, maxBytes int64) (*narinfoCache, *clock) {
	c := newNarinfoCache(ttl, maxAge, maxBytes)
	clk := &clock{time.Unix(1000, 0)}
	c.now = clk.now
	return c, clk
}

// lookup runs one cache fill as getNarinfo does.
func lookup(c *narinfoCache, hash string, found bool, body string) {
	c.finish(c.begin(hash), found, body)
}

// cached returns the cached answer for hash: "" when none, else
// "found <body>" or "404 <body>".
func cached(c *narinfoCache, hash string) string {
	e, ok := c.get(hash)
	switch {
	case !ok:
		return ""
	case e.found:
		return "found " + e.body
	default:
		return "404 " + e.body
	}
}

// TestNarinfoCacheTTL: without the watch in sync, found paths are cached
// for the TTL, 404s not at all.
func TestNarinfoCacheTTL(t *testing.T) {
	c, clk := newTestCache(2*time.Second, time.Hour, 1<<20)
	lookup(c, "a", true, "A")
	lookup(c, "b", false, "no b")
	if got := cached(c, "a"); got != "found A" {
		t.Errorf("a: %q, want found A", got)
	}
	if got := cached(c, "b"); got != "" {
		t.Errorf("b: %q, want no 404 cached while the watch is down", got)
	}
	clk.t = clk.t.Add(2 * time.Second)
	if got := cached(c, "a"); got != "" {
		t.Errorf("a after the TTL: %q, want a miss", got)
	}
	// Failed attempts to watch keep what the TTL rule cached.
	lookup(c, "a", true, "A")
	c.setLive(false, false)
	if got := cached(c, "a"); got != "found A" {
		t.Errorf("a after a failed watch attempt: %q, want still cached for the TTL", got)
	}
	// A pushed path is dropped at once.
	c.invalidate("a")
	if got := cached(c, "a"); got != "" {
		t.Errorf("a after invalidate: %q, want a miss", got)
	}
}

// TestNarinfoCacheLive: with the watch in sync, answers (404s too) live
// max age, an event drops them at once, and a change of state drops all.
func TestNarinfoCacheLive(t *testing.T) {
	c, clk := newTestCache(2*time.Second, time.Hour, 1<<20)
	c.setLive(true, true)
	lookup(c, "a", true, "A")
	lookup(c, "b", false, "no b")
	clk.t = clk.t.Add(59 * time.Minute)
	if got := cached(c, "a"); got != "found A" {
		t.Errorf("a after 59 min: %q, want found A", got)
	}
	if got := cached(c, "b"); got != "404 no b" {
		t.Errorf("b after 59 min: %q, want the 404 cached", got)
	}
	clk.t = clk.t.Add(time.Minute)
	if got := cached(c, "a"); got != "" {
		t.Errorf("a after max age: %q, want a miss", got)
	}

	lookup(c, "a", true, "A")
	lookup(c, "b", false, "no b")
	c.invalidate("a", "b", "never-cached")
	if got, got2 := cached(c, "a"), cached(c, "b"); got != "" || got2 != "" {
		t.Errorf("after invalidate: a %q, b %q; want both dropped", got, got2)
	}

	lookup(c, "a", true, "A")
	c.setLive(false, false)
	if got := cached(c, "a"); got != "" {
		t.Errorf("a after the watch was lost: %q, want dropped (events may be missed)", got)
	}
	lookup(c, "a", true, "A")
	c.setLive(true, true)
	if got := cached(c, "a"); got != "" {
		t.Errorf("a cached before the watch got in sync: %q, want dropped", got)
	}
	st := c.stats()
	if st.Evicted["invalidated"] != 2 || st.Evicted["dropped"] != 2 || st.Evicted["expired"] != 1 {
		t.Errorf("evictions %v, want 2 invalidated, 2 dropped, 1 expired", st.Evicted)
	}
	if !st.WatchUp || st.WatchSyncs != 2 {
		t.Errorf("watch up %v, syncs %d; want true, 2", st.WatchUp, st.WatchSyncs)
	}

	// An index whose absences may end without an event (upstreams): found
	// paths live max age, 404s are not cached.
	c.setLive(false, false)
	c.setLive(true, false)
	lookup(c, "a", true, "A")
	lookup(c, "b", false, "no b")
	clk.t = clk.t.Add(59 * time.Minute)
	if got, got2 := cached(c, "a"), cached(c, "b"); got != "found A" || got2 != "" {
		t.Errorf("in sync without cache_not_found: a %q, b %q; want a cached, b not", got, got2)
	}
}

// TestNarinfoCacheRaces: an answer the index gave before a change, but
// that arrives after the change's event, is not cached; nor one from
// before a change of state.
func TestNarinfoCacheRaces(t *testing.T) {
	c, _ := newTestCache(2*time.Second, time.Hour, 1<<20)
	c.setLive(true, true)

	tok := c.begin("a") // the lookup asks the index...
	c.invalidate("a")   // ...the path is deleted, the event arrives...
	c.finish(tok, true, "A")
	if got := cached(c, "a"); got != "" {
		t.Errorf("an answer that raced with an event is cached: %q", got)
	}

	tok = c.begin("b")
	c.setLive(false, false)
	c.setLive(true, true)
	c.finish(tok, false, "no b")
	if got := cached(c, "b"); got != "" {
		t.Errorf("an answer from before a resubscription is cached: %q", got)
	}

	// Two lookups in flight; the event marks both.
	t1, t2 := c.begin("c"), c.begin("c")
	c.invalidate("c")
	c.finish(t1, true, "C")
	t3 := c.begin("c") // begun after the event: its answer is fresh, but shares the mark
	c.finish(t2, true, "C")
	c.finish(t3, true, "C")
	if got := cached(c, "c"); got != "" {
		t.Errorf("c: %q, want nothing cached from lookups overlapping the event", got)
	}
	// Once none is in flight, the next lookup caches again.
	lookup(c, "c", true, "C")
	if got := cached(c, "c"); got != "found C" {
		t.Errorf("c afterwards: %q, want found C", got)
	}
	abandoned := c.begin("d")
	c.abandon(abandoned)
	if n := len(c.pending); n != 0 {
		t.Errorf("%d lookups still recorded in flight, want 0", n)
	}
}

// TestNarinfoCacheSize: the cache stays within its bytes, dropping the
// least recently used.
func TestNarinfoCacheSize(t *testing.T) {
	body := strings.Repeat("x", 1000)
	per := int64(len(body)+1) + narinfoEntryOverhead
	c, _ := newTestCache(time.Minute, 0, 2*per)
	lookup(c, "a", true, body)
	lookup(c, "b", true, body)
	c.get("a") // b is now the least recently used
	lookup(c, "c", true, body)
	for _, tc := range []struct {
		hash string
		want bool
	}{{"a", true}, {"b", false}, {"c", true}} {
		if _, ok := c.get(tc.hash); ok != tc.want {
			t.Errorf("get(%s) after eviction: found %v, want %v", tc.hash, ok, tc.want)
		}
	}
	if st := c.stats(); st.Bytes > 2*per || st.Entries != 2 || st.Evicted["size"] != 1 {
		t.Errorf("stats %+v, want 2 entries within %d bytes, 1 evicted for size", st, 2*per)
	}
	// An answer larger than the whole cache is not cached.
	lookup(c, "huge", true, strings.Repeat("x", int(3*per)))
	if _, ok := c.get("huge"); ok {
		t.Error("an answer larger than the cache was cached")
	}
}

func TestNarinfoCacheOff(t *testing.T) {
	for _, tc := range []struct {
		ttl, maxAge time.Duration
		size        int64
	}{{0, 0, 1 << 20}, {time.Second, time.Hour, 0}} {
		t.Run(fmt.Sprint(tc.ttl, tc.maxAge, tc.size), func(t *testing.T) {
			if c := newNarinfoCache(tc.ttl, tc.maxAge, tc.size); c != nil {
				t.Error("newNarinfoCache returned a cache that should be off")
			}
			var c *narinfoCache
			lookup(c, "a", true, "A")
			c.invalidate("a")
			c.setLive(true, true)
			if _, ok := c.get("a"); ok {
				t.Error("a cache that is off returned an entry")
			}
		})
	}
}

// TestNarinfoCacheMemory: narinfoEntryOverhead accounts for what an entry
// really costs on the heap, so the size bound holds.
func TestNarinfoCacheMemory(t *testing.T) {
	const n = 20000
	c, _ := newTestCache(time.Hour, time.Hour, 1<<40)
	c.setLive(true, true)
	bodies := make([]string, n)
	hashes := make([]string, n)
	for i := range n {
		hashes[i] = fmt.Sprintf("%032d", i)
		bodies[i] = strings.Repeat("x", 1000) // as the gateway renders it, a fresh string each
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range n {
		lookup(c, hashes[i], true, bodies[i])
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	// The hashes and bodies existed before: what grew is the entries.
	perEntry := float64(after.HeapAlloc-before.HeapAlloc) / n
	runtime.KeepAlive(bodies)
	t.Logf("heap per entry beyond its hash and narinfo: %.0f bytes (accounted: %d)", perEntry, narinfoEntryOverhead)
	if perEntry > narinfoEntryOverhead*1.1 {
		t.Errorf("an entry costs %.0f bytes beyond its narinfo, more than the %d accounted", perEntry, narinfoEntryOverhead)
	}
	if st := c.stats(); st.Entries != n {
		t.Fatalf("%d entries cached, want %d", st.Entries, n)
	}
}

// nullWriter is a ResponseWriter that keeps nothing but its header.
type nullWriter struct{ h http.Header }

func (w *nullWriter) Header() http.Header         { return w.h }
func (w *nullWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *nullWriter) WriteHeader(int)             {}
func (w *nullWriter) WriteString(s string) (int, error) {
	return len(s), nil
}

// TestNarinfoHitAllocs: answering a narinfo from the cache allocates
// nothing in the handler (net/http's own per-request work aside).
func TestNarinfoHitAllocs(t *testing.T) {
	h := &Handler{Config: Config{Auth: auth.Policy{PublicRead: true}, Log: slog.Default()}}
	h.narinfos, _ = newTestCache(time.Hour, time.Hour, 1<<20)
	h.narinfos.now = time.Now
	h.narinfos.setLive(true, true)
	hash := hashPart("hot")
	lookup(h.narinfos, hash, true, "StorePath: /nix/store/"+hash+"-hot\n")
	lookup(h.narinfos, hashPart("gone"), false, "store path is not in the cache")
	for _, name := range []string{"hot", "gone"} {
		r, err := http.NewRequest(http.MethodGet, "/"+hashPart(name)+".narinfo", nil)
		if err != nil {
			t.Fatal(err)
		}
		w := &nullWriter{h: http.Header{}}
		h.getNarinfo(w, r)
		if _, ok := w.h["Content-Type"]; !ok {
			t.Fatalf("%s: no answer from the cache", name)
		}
		allocs := testing.AllocsPerRun(1000, func() { h.getNarinfo(w, r) })
		if allocs != 0 {
			t.Errorf("%s: a cached answer allocates %v times, want 0", name, allocs)
		}
	}
	if st := h.narinfos.stats(); st.Misses != 0 {
		t.Errorf("%d cache misses, want every lookup a hit", st.Misses)
	}
}

func TestAccessLevel(t *testing.T) {
	for _, tc := range []struct {
		method string
		code   int
		want   slog.Level
	}{
		{"GET", 200, slog.LevelDebug},
		{"HEAD", 206, slog.LevelDebug},
		{"GET", 304, slog.LevelDebug},
		{"GET", 404, slog.LevelInfo},
		{"GET", statusClientClosed, slog.LevelInfo},
		{"PUT", 204, slog.LevelInfo},
		{"PUT", 501, slog.LevelInfo},
		{"GET", 502, slog.LevelWarn},
	} {
		if got := accessLevel(tc.method, tc.code); got != tc.want {
			t.Errorf("accessLevel(%s, %d) = %v, want %v", tc.method, tc.code, got, tc.want)
		}
	}
}
