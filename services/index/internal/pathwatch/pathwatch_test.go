package pathwatch

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
)

const (
	published = indexv1.PathEventKind_PATH_EVENT_KIND_PUBLISHED
	removed   = indexv1.PathEventKind_PATH_EVENT_KIND_REMOVED
	changed   = indexv1.PathEventKind_PATH_EVENT_KIND_CHANGED
)

// next returns the watcher's next event, failing if none is buffered.
func next(t *testing.T, w *Watcher) *indexv1.PathEvent {
	t.Helper()
	select {
	case ev := <-w.Events():
		return ev
	default:
		t.Fatal("no event buffered")
		return nil
	}
}

func TestFanOut(t *testing.T) {
	h := NewHub(8)
	a, b := h.Subscribe(), h.Subscribe()
	defer a.Close()
	defer b.Close()
	h.Publish(published, "p1")
	h.Publish(removed, "p2", "p3")
	h.Publish(changed) // nothing: no event
	for name, w := range map[string]*Watcher{"a": a, "b": b} {
		ev := next(t, w)
		if ev.GetKind() != published || !slices.Equal(ev.GetHashParts(), []string{"p1"}) {
			t.Errorf("%s: first event %v, want published p1", name, ev)
		}
		ev = next(t, w)
		if ev.GetKind() != removed || !slices.Equal(ev.GetHashParts(), []string{"p2", "p3"}) {
			t.Errorf("%s: second event %v, want removed p2 p3", name, ev)
		}
		select {
		case ev := <-w.Events():
			t.Errorf("%s: unexpected third event %v", name, ev)
		default:
		}
		if err := w.Err(); err != nil {
			t.Errorf("%s: Err = %v, want nil", name, err)
		}
	}
	if got := h.Stats(); got.Watchers != 2 || got.Published[published] != 1 || got.Published[removed] != 2 {
		t.Errorf("stats %+v, want 2 watchers, 1 published, 2 removed", got)
	}
}

func TestLateSubscriberSeesOnlyLaterEvents(t *testing.T) {
	h := NewHub(8)
	h.Publish(published, "before")
	w := h.Subscribe()
	defer w.Close()
	h.Publish(removed, "after")
	if ev := next(t, w); !slices.Equal(ev.GetHashParts(), []string{"after"}) {
		t.Errorf("first event %v, want the one published after Subscribe", ev)
	}
}

func TestLargeChangeIsSplit(t *testing.T) {
	h := NewHub(8)
	w := h.Subscribe()
	defer w.Close()
	var hashes []string
	for i := range MaxHashParts*2 + 3 {
		hashes = append(hashes, fmt.Sprintf("h%d", i))
	}
	h.Publish(removed, hashes...)
	var got []string
	for range 3 {
		ev := next(t, w)
		if n := len(ev.GetHashParts()); n > MaxHashParts {
			t.Errorf("event of %d hash parts, want at most %d", n, MaxHashParts)
		}
		got = append(got, ev.GetHashParts()...)
	}
	if !slices.Equal(got, hashes) {
		t.Errorf("got %d hash parts back, want the %d published in order", len(got), len(hashes))
	}
}

// TestOverflowCutsOnlyTheSlowWatcher: a watcher that reads nothing is cut
// off once its buffer is full; Publish does not block on it (this test
// publishes from its only goroutine), and a watcher that keeps up is
// unaffected.
func TestOverflowCutsOnlyTheSlowWatcher(t *testing.T) {
	const buffer = 4
	h := NewHub(buffer)
	slow, fast := h.Subscribe(), h.Subscribe()
	defer fast.Close()
	for round := range 3 {
		for i := range buffer {
			h.Publish(published, fmt.Sprintf("p%d-%d", round, i))
		}
		for i := range buffer {
			if ev := next(t, fast); ev.GetHashParts()[0] != fmt.Sprintf("p%d-%d", round, i) {
				t.Fatalf("fast watcher: event %v, want p%d-%d", ev, round, i)
			}
		}
		if err := fast.Err(); err != nil {
			t.Fatalf("fast watcher Err = %v, want nil", err)
		}
		if round == 0 && slow.Err() != nil {
			t.Fatalf("slow watcher cut off with a buffer just full: %v", slow.Err())
		}
	}
	select {
	case <-slow.Done():
	default:
		t.Fatal("the slow watcher is not cut off after overflowing its buffer")
	}
	if err := slow.Err(); !errors.Is(err, ErrOverflow) {
		t.Errorf("slow watcher Err = %v, want ErrOverflow", err)
	}
	st := h.Stats()
	if st.Watchers != 1 || st.Overflows != 1 {
		t.Errorf("stats %+v, want 1 watcher left and 1 overflow", st)
	}
	slow.Close() // after being cut off: harmless
}

func TestResetAndClose(t *testing.T) {
	h := NewHub(8)
	a := h.Subscribe()
	h.Reset()
	if err := a.Err(); !errors.Is(err, ErrReset) {
		t.Errorf("after Reset, Err = %v, want ErrReset", err)
	}
	b := h.Subscribe()
	if err := b.Err(); err != nil {
		t.Errorf("a watcher subscribed after Reset is cut off: %v", err)
	}
	h.Close()
	if err := b.Err(); !errors.Is(err, ErrClosed) {
		t.Errorf("after Close, Err = %v, want ErrClosed", err)
	}
	c := h.Subscribe()
	if err := c.Err(); !errors.Is(err, ErrClosed) {
		t.Errorf("Subscribe on a closed hub: Err = %v, want ErrClosed", err)
	}
	h.Publish(published, "x") // no watchers: nothing to do, no panic
}

func TestNilHub(t *testing.T) {
	var h *Hub
	h.Publish(published, "x")
	h.Reset()
	h.Close()
}
