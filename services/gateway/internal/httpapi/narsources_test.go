package httpapi

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
)

// statsFor returns how many of n GETs of url asked the index's StatNar,
// failing unless each answered code.
func statsFor(t *testing.T, e *env, url string, n, code int) int {
	t.Helper()
	before := e.index.calls(func(f *fakeIndex) int { return len(f.statNars) })
	for range n {
		if got := e.do(t, request{method: "GET", path: url}); got.code != code {
			t.Fatalf("GET %s: %d, want %d (%s)", url, got.code, code, clipBody(got.body))
		}
	}
	return e.index.calls(func(f *fakeIndex) int { return len(f.statNars) }) - before
}

// calls reads a count of the fake's calls under its lock.
func (f *fakeIndex) calls(count func(*fakeIndex) int) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return count(f)
}

func event(kind indexv1.PathEventKind, hashes ...string) *indexv1.WatchPathsResponse {
	return &indexv1.WatchPathsResponse{Events: []*indexv1.PathEvent{{Kind: kind, HashParts: hashes}}}
}

// TestNarSourceCache: a co-located gateway asks the index about a NAR file
// once while the watch is in sync, and again after any path is removed,
// after the disk contradicted the answer, and after the watch was lost.
func TestNarSourceCache(t *testing.T) {
	dir := t.TempDir()
	e, wi, h := newWatchEnv(t, time.Minute, func(c *Config) { c.NarDir = dir })
	p := e.addPath("cached-file", 3000)
	url := "/nar/" + p.fileHash.NixBase32() + ".nar.xz"
	events := func() uint64 { return h.NarinfoCacheStats().WatchEvents }

	s := nextSession(t, wi, 5*time.Second)
	if n := statsFor(t, e, url, 2, 200); n != 2 {
		t.Errorf("before the watch is in sync: %d of 2 downloads asked the index, want 2", n)
	}
	s.send <- &indexv1.WatchPathsResponse{Synced: true, CacheNotFound: true}
	waitFor(t, "the watch in sync", func() bool { return h.NarinfoCacheStats().WatchUp })
	if n := statsFor(t, e, url, 3, 200); n != 1 {
		t.Errorf("in sync: %d of 3 downloads asked the index, want 1", n)
	}

	// Paths published or re-signed leave the files alone.
	s.send <- event(indexv1.PathEventKind_PATH_EVENT_KIND_PUBLISHED, hashPart("other"))
	s.send <- event(indexv1.PathEventKind_PATH_EVENT_KIND_CHANGED, p.hash)
	waitFor(t, "two events received", func() bool { return events() == 2 })
	if n := statsFor(t, e, url, 2, 200); n != 0 {
		t.Errorf("after publish and change events: %d of 2 downloads asked the index, want 0", n)
	}

	// The path is deleted and its file collected from the index, though
	// still on disk: its removal drops the answer, and the index's 404
	// stands.
	e.index.mu.Lock()
	delete(e.index.files, p.fileHash.String())
	delete(e.index.paths, p.hash)
	e.index.mu.Unlock()
	s.send <- event(indexv1.PathEventKind_PATH_EVENT_KIND_REMOVED, p.hash)
	waitFor(t, "the removal received", func() bool { return events() == 3 })
	if n := statsFor(t, e, url, 2, 404); n != 2 {
		t.Errorf("after the removal: %d of 2 downloads asked the index, want 2 (a 404 is not kept)", n)
	}

	// The disk contradicts a kept answer (the file went before its
	// event): the index's stream answers, and the index is asked again
	// next time.
	q := e.addPath("moved-file", 3000)
	qURL := "/nar/" + q.fileHash.NixBase32() + ".nar.xz"
	if n := statsFor(t, e, qURL, 2, 200); n != 1 {
		t.Fatalf("setup: %d of 2 downloads asked the index, want 1", n)
	}
	e.index.mu.Lock()
	rel := e.index.relPaths[q.fileHash.String()]
	e.index.mu.Unlock()
	if err := os.Remove(filepath.Join(dir, filepath.FromSlash(rel))); err != nil {
		t.Fatal(err)
	}
	streams := e.index.calls(func(f *fakeIndex) int { return len(f.getNars) })
	if got := e.do(t, request{method: "GET", path: qURL}); got.code != 200 || string(got.body) != string(q.file) {
		t.Fatalf("GET with the file gone from disk: %d, %d bytes", got.code, len(got.body))
	}
	if n := e.index.calls(func(f *fakeIndex) int { return len(f.getNars) }) - streams; n != 1 {
		t.Errorf("the file gone from disk: %d GetNar streams, want 1", n)
	}
	if n := statsFor(t, e, qURL, 1, 200); n != 1 {
		t.Errorf("after the disk contradicted it, the answer was kept (%d StatNar calls, want 1)", n)
	}

	// An answer in flight while a path is removed is not kept: it may
	// predate the removal.
	r := e.addPath("raced", 3000)
	rURL := "/nar/" + r.fileHash.NixBase32() + ".nar.xz"
	var once sync.Once
	raced := func() {
		once.Do(func() {
			want := events() + 1
			s.send <- event(indexv1.PathEventKind_PATH_EVENT_KIND_REMOVED, hashPart("elsewhere"))
			for deadline := time.Now().Add(5 * time.Second); events() < want && time.Now().Before(deadline); {
				time.Sleep(time.Millisecond)
			}
		})
	}
	wi.duringStat.Store(&raced)
	if n := statsFor(t, e, rURL, 2, 200); n != 2 {
		t.Errorf("an answer that raced a removal: %d of 2 downloads asked the index, want 2", n)
	}
	if n := statsFor(t, e, rURL, 2, 200); n != 0 {
		t.Errorf("after the race: %d of 2 downloads asked the index, want 0", n)
	}

	// The watch is lost: nothing is kept until it is in sync again.
	s.end <- status.Error(codes.Unavailable, "index restarting")
	waitFor(t, "the watch down", func() bool { return !h.NarinfoCacheStats().WatchUp })
	if n := statsFor(t, e, rURL, 2, 200); n != 2 {
		t.Errorf("watch lost: %d of 2 downloads asked the index, want 2", n)
	}
}

// TestNarSourceCacheBound: the cache never holds more than its bound, and
// an entry in use survives the turnover of generations.
func TestNarSourceCacheBound(t *testing.T) {
	c := newNarSourceCache(time.Hour, 10)
	c.setLive(true)
	for i := range 100 {
		c.finish(c.begin(), fmt.Sprint(i), narSource{file: &indexv1.NarFile{}, rel: "x"})
		if _, ok := c.get("0"); !ok {
			t.Fatalf("entry 0, used after every insert, was dropped at insert %d", i)
		}
		if n := c.len(); n > 10 {
			t.Fatalf("%d entries after %d inserts, bound 10", n, i+1)
		}
	}
	if _, ok := c.get("1"); ok {
		t.Error("entry 1, never used, survived 100 inserts into 10 places")
	}
	// Expired entries are not served.
	now := time.Now()
	c.now = func() time.Time { return now.Add(2 * time.Hour) }
	if _, ok := c.get("0"); ok {
		t.Error("an entry older than its max age was served")
	}
}

// TestReportDownloads: downloads served from NarDir reach the index in
// reports, counted once per download and with every byte sent; a report
// the index refused goes again with the next.
func TestReportDownloads(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.NarDir = t.TempDir() })
	p := e.addPath("reported", 3000)
	url := "/nar/" + p.fileHash.NixBase32() + ".nar.xz"
	size := uint64(len(p.file))

	// The index refuses a report: the counts wait for the next.
	e.do(t, request{method: "GET", path: url})
	e.index.mu.Lock()
	e.index.err = status.Error(codes.Unavailable, "index restarting")
	e.index.mu.Unlock()
	e.h.sendDownloads(context.Background())
	e.index.mu.Lock()
	e.index.err = nil
	e.index.mu.Unlock()

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); e.h.ReportDownloads(ctx) }()
	e.do(t, request{method: "GET", path: url})
	e.do(t, request{method: "GET", path: url, header: map[string]string{"Range": "bytes=100-"}})
	cancel() // the last report goes when the reporter stops
	<-done

	var count, bytes uint64
	e.index.mu.Lock()
	for _, d := range e.index.downloads {
		if d.GetFileHash() != p.fileHash.String() {
			t.Errorf("a report names %s, want %s", d.GetFileHash(), p.fileHash)
		}
		count += d.GetCount()
		bytes += d.GetBytes()
	}
	e.index.mu.Unlock()
	if want := 3*size - 100; count != 2 || bytes != want {
		t.Errorf("reported %d downloads, %d bytes; want 2 downloads (a range from 100 is not one), %d bytes", count, bytes, want)
	}
}

// TestDownloadLogBound: a report the index refused is put back only as
// far as the bound on pending files allows.
func TestDownloadLogBound(t *testing.T) {
	l := newDownloadLog()
	now := time.Now()
	for i := range maxPendingDownloadFiles {
		l.note(fmt.Sprint(i), "", 0, 1, now)
	}
	select {
	case <-l.full:
	default:
		t.Error("a full log did not ask for a report")
	}
	batch := l.take()
	l.note("new", "", 0, 1, now)
	l.note("0", "", 0, 1, now)
	if dropped := l.requeue(batch); dropped != 1 {
		t.Errorf("requeue dropped %d files, want 1 (one place was taken by a new file)", dropped)
	}
	for _, d := range l.take() {
		if d.GetFileHash() == "0" && d.GetCount() != 2 {
			t.Errorf("file 0: %d downloads after requeue, want 2", d.GetCount())
		}
	}
}

// TestNarSourceCacheMemory: a full cache stays within what
// DefaultNarSourceCacheEntries promises (some 16 MiB), with entries as the
// gateway makes them: StatNar answers as they arrive, and trimmed infos of
// host paths.
func TestNarSourceCacheMemory(t *testing.T) {
	const n = DefaultNarSourceCacheEntries
	const budget = 18 << 20
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	c := newNarSourceCache(time.Hour, n)
	c.setLive(true)
	for i := range n {
		fileHash := fmt.Sprintf("sha256:%052d", i)
		if i%2 == 0 {
			c.finish(c.begin(), fileHash, narSource{
				file: &indexv1.NarFile{FileHash: fileHash, FileSize: 1 << 20, Compression: "zstd",
					NarHash: fmt.Sprintf("sha256:%052d", -i), NarSize: 3 << 20},
				rel: fileHash[7:9] + "/" + fileHash[7:] + ".nar.zst",
			})
			continue
		}
		hash := fmt.Sprintf("%032d", i)
		c.finish(c.begin(), storeKey(hash), narSource{info: &indexv1.PathInfo{
			StorePath: "/nix/store/" + hash + "-some-package-1.2.3", NarHash: fmt.Sprintf("sha256:%052d", i), NarSize: 1 << 20,
		}})
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	grew := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("%d entries: %.1f MiB, %d bytes an entry", c.len(), float64(grew)/(1<<20), grew/int64(c.len()))
	if c.len() < n/2 || c.len() > n {
		t.Errorf("%d entries kept, want between %d and %d", c.len(), n/2, n)
	}
	if grew > budget {
		t.Errorf("a full cache takes %.1f MiB, more than the %d MiB promised", float64(grew)/(1<<20), budget>>20)
	}
	runtime.KeepAlive(c)
}
