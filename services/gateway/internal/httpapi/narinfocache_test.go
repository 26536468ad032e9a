package httpapi

import (
	"fmt"
	"log/slog"
	"testing"
	"time"
)

func TestNarinfoCache(t *testing.T) {
	now := time.Unix(1000, 0)
	c := newNarinfoCache(2*time.Second, 2)
	c.now = func() time.Time { return now }

	c.put("a", "A")
	if got, ok := c.get("a"); !ok || got != "A" {
		t.Fatalf("get(a) = %q, %v; want A, true", got, ok)
	}
	now = now.Add(2 * time.Second)
	if got, ok := c.get("a"); ok {
		t.Fatalf("get(a) after the TTL = %q; want a miss", got)
	}

	c.put("a", "A")
	c.put("b", "B")
	c.get("a") // b is now the least recently used
	c.put("c", "C")
	for _, tc := range []struct {
		hash string
		want bool
	}{{"a", true}, {"b", false}, {"c", true}} {
		if _, ok := c.get(tc.hash); ok != tc.want {
			t.Errorf("get(%s) after eviction: found %v, want %v", tc.hash, ok, tc.want)
		}
	}
	c.forget("a")
	if _, ok := c.get("a"); ok {
		t.Error("get(a) after forget: found")
	}
	if n := len(c.items); n != c.order.Len() || n > 2 {
		t.Errorf("cache holds %d items and %d list entries; want equal and at most 2", n, c.order.Len())
	}
}

func TestNarinfoCacheOff(t *testing.T) {
	for _, tc := range []struct {
		ttl time.Duration
		max int
	}{{0, 10}, {time.Second, 0}} {
		t.Run(fmt.Sprint(tc.ttl, tc.max), func(t *testing.T) {
			c := newNarinfoCache(tc.ttl, tc.max)
			c.put("a", "A")
			if _, ok := c.get("a"); ok {
				t.Error("a cache that is off returned an entry")
			}
		})
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
