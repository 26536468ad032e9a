// Package pathwatch fans the catalogue's changes to published paths out to
// watchers (IndexService.WatchPaths), without ever making the catalogue
// wait: each watcher has a bounded buffer, and a watcher that lets it fill
// up is cut off, to watch again and assume it missed changes.
package pathwatch

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
)

// DefaultBuffer is how many events a watcher may fall behind before it is
// cut off. An event carries at most MaxHashParts hash parts, so a full
// buffer holds at most DefaultBuffer*MaxHashParts*32 bytes of them (16 MiB),
// and usually far less: most events name one path.
const DefaultBuffer = 1024

// MaxHashParts is the most hash parts one event carries; a change of more
// paths (a garbage collection, a key rotation) is cut into several events.
const MaxHashParts = 512

// Errors a watcher ends with.
var (
	// ErrOverflow: the watcher fell more than its buffer behind.
	ErrOverflow = errors.New("watcher fell behind")
	// ErrReset: the catalogue changed in a way events do not describe
	// (every path of the host's store forgotten).
	ErrReset = errors.New("the catalogue was reset")
	// ErrClosed: the hub is closed (the index is shutting down).
	ErrClosed = errors.New("the index is shutting down")
)

// Hub is where the catalogue publishes its changes and watchers subscribe.
// A nil *Hub publishes nothing. It is safe for concurrent use.
type Hub struct {
	buffer int

	mu       sync.Mutex
	watchers map[*Watcher]struct{}
	closed   bool

	overflows atomic.Uint64
	events    [4]atomic.Uint64 // hash parts published, by kind
	tokens    atomic.Uint64    // TOKENS_CHANGED events published
}

// NewHub returns a hub whose watchers buffer at most buffer events.
func NewHub(buffer int) *Hub {
	return &Hub{buffer: max(buffer, 1), watchers: map[*Watcher]struct{}{}}
}

// Watcher receives the events published after it subscribed, until it is
// cut off (Done) or closes.
type Watcher struct {
	hub    *Hub
	events chan *indexv1.PathEvent
	done   chan struct{}
	err    error // set before done is closed
}

// Subscribe returns a new watcher. On a closed hub it is already done.
func (h *Hub) Subscribe() *Watcher {
	w := &Watcher{hub: h, events: make(chan *indexv1.PathEvent, h.buffer), done: make(chan struct{})}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		w.err = ErrClosed
		close(w.done)
		return w
	}
	h.watchers[w] = struct{}{}
	return w
}

// Events delivers the events, in the order they were published.
func (w *Watcher) Events() <-chan *indexv1.PathEvent { return w.events }

// Done is closed when the watcher is cut off; Err then says why.
func (w *Watcher) Done() <-chan struct{} { return w.done }

// Err is why the watcher was cut off: ErrOverflow, ErrReset or ErrClosed;
// nil while it is not.
func (w *Watcher) Err() error {
	select {
	case <-w.done:
		return w.err
	default:
		return nil
	}
}

// Close unsubscribes the watcher.
func (w *Watcher) Close() {
	w.hub.mu.Lock()
	defer w.hub.mu.Unlock()
	delete(w.hub.watchers, w)
}

// cut ends w with err; the caller holds the hub's lock.
func (h *Hub) cut(w *Watcher, err error) {
	delete(h.watchers, w)
	w.err = err
	close(w.done)
}

// Publish tells every watcher that the paths with these hash parts had
// kind of change. It never blocks: a watcher whose buffer is full is cut
// off with ErrOverflow. Call it after the change is committed, so that a
// watcher that reads the path on the event sees the change. Publish keeps
// hashParts: the caller must not change it after. TOKENS_CHANGED, which
// names no path, is published with no hash parts.
func (h *Hub) Publish(kind indexv1.PathEventKind, hashParts ...string) {
	if h == nil {
		return
	}
	var events []*indexv1.PathEvent
	switch {
	case kind == indexv1.PathEventKind_PATH_EVENT_KIND_TOKENS_CHANGED:
		h.tokens.Add(1)
		events = append(events, &indexv1.PathEvent{Kind: kind})
	case len(hashParts) == 0:
		return
	case int(kind) < len(h.events):
		h.events[kind].Add(uint64(len(hashParts)))
	}
	for len(hashParts) > 0 {
		n := min(len(hashParts), MaxHashParts)
		// Watchers share the events: nobody changes them once published.
		events = append(events, &indexv1.PathEvent{Kind: kind, HashParts: hashParts[:n:n]})
		hashParts = hashParts[n:]
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for w := range h.watchers {
		for _, ev := range events {
			select {
			case w.events <- ev:
				continue
			default:
			}
			h.overflows.Add(1)
			h.cut(w, fmt.Errorf("%w: more than %d events buffered", ErrOverflow, h.buffer))
			break
		}
	}
}

// Reset cuts every watcher off with ErrReset: they missed changes that
// events do not describe.
func (h *Hub) Reset() {
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for w := range h.watchers {
		h.cut(w, ErrReset)
	}
}

// Close cuts every watcher off with ErrClosed, and every later one at
// once.
func (h *Hub) Close() {
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true
	for w := range h.watchers {
		h.cut(w, ErrClosed)
	}
}

// Stats are the hub's counters.
type Stats struct {
	Watchers  int
	Overflows uint64
	// Published counts the hash parts published, by kind.
	Published map[indexv1.PathEventKind]uint64
	// TokenEvents counts the TOKENS_CHANGED events published.
	TokenEvents uint64
}

// Stats reads the counters.
func (h *Hub) Stats() Stats {
	h.mu.Lock()
	n := len(h.watchers)
	h.mu.Unlock()
	s := Stats{Watchers: n, Overflows: h.overflows.Load(), Published: map[indexv1.PathEventKind]uint64{}, TokenEvents: h.tokens.Load()}
	for _, k := range []indexv1.PathEventKind{indexv1.PathEventKind_PATH_EVENT_KIND_PUBLISHED,
		indexv1.PathEventKind_PATH_EVENT_KIND_REMOVED, indexv1.PathEventKind_PATH_EVENT_KIND_CHANGED} {
		s.Published[k] = h.events[k].Load()
	}
	return s
}
