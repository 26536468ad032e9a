package catalog

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	bolt "go.etcd.io/bbolt"

	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/fault"
)

// brokenClosures lists, in the state tx sees, the published paths with a
// reference that is not published.
func brokenClosures(tx *bolt.Tx) []string {
	var broken []string
	paths := tx.Bucket(pathsBucket)
	paths.ForEach(func(k, v []byte) error {
		info, err := decodePath(string(k), v)
		if err != nil {
			broken = append(broken, fmt.Sprintf("%s: %v", k, err))
			return nil
		}
		for _, ref := range info.GetReferences() {
			if ref[:32] != string(k) && paths.Get([]byte(ref[:32])) == nil {
				broken = append(broken, fmt.Sprintf("%s refers to %s, not published", k, ref))
			}
		}
		return nil
	})
	return broken
}

// closureGraph is a small catalogue's worth of paths: deps refer to
// nothing, mids to deps, tops to a mid and maybe a dep; each has its own
// NAR file.
type closureGraph struct {
	infos map[string]*indexv1.PathInfo
	keys  []string // deps, then mids, then tops
}

func newClosureGraph(rng *rand.Rand, deps, mids, tops int) *closureGraph {
	g := &closureGraph{infos: map[string]*indexv1.PathInfo{}}
	add := func(name string, refs []string) {
		key := randHashPart(rng)
		fh := randHash(rng)
		info := &indexv1.PathInfo{StorePath: "/nix/store/" + key + "-" + name, NarHash: fh, NarSize: 100, References: refs,
			File: &indexv1.NarFile{FileHash: fh, FileSize: 100, Compression: "none", NarHash: fh, NarSize: 100}}
		g.infos[key] = info
		g.keys = append(g.keys, key)
	}
	base := func(i int) string { return g.infos[g.keys[i]].GetStorePath()[len("/nix/store/"):] }
	for i := range deps {
		add(fmt.Sprint("dep", i), nil)
	}
	for i := range mids {
		refs := []string{base(rng.IntN(deps))}
		if rng.IntN(2) == 0 {
			refs = append(refs, base(rng.IntN(deps)))
		}
		add(fmt.Sprint("mid", i), refs)
	}
	for i := range tops {
		refs := []string{base(deps + rng.IntN(mids))}
		if rng.IntN(2) == 0 {
			refs = append(refs, base(rng.IntN(deps)))
		}
		add(fmt.Sprint("top", i), refs)
	}
	return g
}

// TestClosuresUnderConcurrentWrites hammers one catalogue with what the
// index does at once: publishers that check references and then publish
// (as the publisher does), deletes of paths found without referrers (as
// DeletePath does), garbage collection planned on a snapshot, and
// quarantines; and checks, in every write transaction just before it
// commits, that no published path lacks a reference.
func TestClosuresUnderConcurrentWrites(t *testing.T) {
	for seed := range uint64(3) {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			c, err := Open(filepath.Join(t.TempDir(), "catalog.db"))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.db.NoSync = true // a test: no crash to survive
			var (
				mu        sync.Mutex
				commits   int
				published int
				violation []string
			)
			c.beforeCommit = func(tx *bolt.Tx) {
				broken := brokenClosures(tx)
				mu.Lock()
				defer mu.Unlock()
				commits++
				published = max(published, tx.Bucket(pathsBucket).Stats().KeyN)
				if len(broken) > 0 && len(violation) < 5 {
					violation = append(violation, fmt.Sprintf("commit %d: %s", commits, strings.Join(broken, "; ")))
				}
			}
			g := newClosureGraph(rand.New(rand.NewPCG(seed, 1)), 3, 6, 16)
			const rounds = 300

			var wg sync.WaitGroup
			fail := func(op string, err error) {
				if err != nil && !errors.Is(err, fault.ErrPrecondition) && !errors.Is(err, fault.ErrNotFound) {
					t.Errorf("%s: %v", op, err)
				}
			}
			for w := range 3 {
				wg.Go(func() { // a publisher
					rng := rand.New(rand.NewPCG(seed, uint64(10+w)))
					for range rounds {
						// References first, as nix copy pushes.
						key := g.keys[rng.IntN(len(g.keys))]
						info := g.infos[key]
						_, err := c.AddNarFile(fileKey(info), info.GetFile())
						fail("AddNarFile", err)
						ok := true
						for _, ref := range info.GetReferences() {
							if _, err := c.PathInfo(ref[:32]); err != nil {
								ok = false
							}
						}
						if !ok {
							continue
						}
						_, err = c.UpdatePathInfo(key, func(old *indexv1.PathInfo) (*indexv1.PathInfo, error) {
							if old != nil {
								return nil, nil
							}
							return info, nil
						})
						fail("UpdatePathInfo", err)
					}
				})
			}
			wg.Go(func() { // DeletePath: a path and its referrers, if any
				rng := rand.New(rand.NewPCG(seed, 20))
				for range rounds {
					key := g.keys[rng.IntN(len(g.keys))]
					s, err := c.ReferrerSnapshot(key)
					fail("ReferrerSnapshot", err)
					if err != nil || len(s.Paths) == 0 {
						continue
					}
					victims := []string{}
					for h := range s.Paths {
						victims = append(victims, h)
					}
					// Referrers first: tops, mids, deps.
					slices.SortFunc(victims, func(a, b string) int {
						return slices.Index(g.keys, b) - slices.Index(g.keys, a)
					})
					_, err = c.DeletePaths(victims)
					fail("DeletePaths", err)
				}
			})
			wg.Go(func() { // garbage collection that wants every path gone
				for range rounds / 3 {
					s, err := c.Snapshot(false)
					fail("Snapshot", err)
					var victims []string
					for i := len(g.keys) - 1; i >= 0; i-- {
						if s.Paths[g.keys[i]] != nil {
							victims = append(victims, g.keys[i])
						}
					}
					_, _, err = c.DeleteUnreferred(victims)
					fail("DeleteUnreferred", err)
				}
			})
			wg.Go(func() { // Verify finding a bad NAR now and then
				rng := rand.New(rand.NewPCG(seed, 30))
				for range rounds / 2 {
					key := g.keys[rng.IntN(len(g.keys))]
					_, err := c.Quarantine(key, g.infos[key].GetNarHash())
					fail("Quarantine", err)
				}
			})
			wg.Wait()

			if len(violation) > 0 {
				t.Fatalf("a commit published a path whose reference was not:\n%s", strings.Join(violation, "\n"))
			}
			if published < 5 {
				t.Errorf("at most %d paths were published at once: the hammer hardly ran", published)
			}
			t.Logf("%d commits checked, up to %d paths published", commits, published)
		})
	}
}

// TestClosureRules: the single steps the concurrent test relies on.
func TestClosureRules(t *testing.T) {
	c, err := Open(filepath.Join(t.TempDir(), "catalog.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	g := newClosureGraph(rand.New(rand.NewPCG(7, 7)), 1, 1, 2)
	dep, mid, top1, top2 := g.keys[0], g.keys[1], g.keys[2], g.keys[3]
	publish := func(key string) error {
		info := g.infos[key]
		if _, err := c.AddNarFile(fileKey(info), info.GetFile()); err != nil {
			t.Fatal(err)
		}
		_, err := c.UpdatePathInfo(key, func(*indexv1.PathInfo) (*indexv1.PathInfo, error) { return info, nil })
		return err
	}
	published := func() []string {
		var out []string
		for _, k := range g.keys {
			if _, err := c.PathInfo(k); err == nil {
				out = append(out, strings.TrimPrefix(g.infos[k].GetStorePath(), "/nix/store/")[33:])
			}
		}
		return out
	}
	wantPrecondition := func(what string, err error, says string) {
		t.Helper()
		if !errors.Is(err, fault.ErrPrecondition) || !strings.Contains(err.Error(), says) {
			t.Fatalf("%s: %v, want a precondition error that says %q", what, err, says)
		}
	}

	wantPrecondition("publish mid before dep", publish(mid), "is not in the cache")
	for _, k := range []string{dep, mid, top1} {
		if err := publish(k); err != nil {
			t.Fatalf("publish: %v", err)
		}
	}
	// A file not recorded (dropped by a delete meanwhile) is refused too.
	if _, err := c.DeletePaths([]string{top1}); err != nil {
		t.Fatal(err)
	}
	_, err = c.UpdatePathInfo(top1, func(*indexv1.PathInfo) (*indexv1.PathInfo, error) { return g.infos[top1], nil })
	wantPrecondition("publish with its NAR file gone", err, "NAR file")

	_, err = c.DeletePaths([]string{dep})
	wantPrecondition("delete a path a published one refers to", err, "is referred to by")
	if got := published(); !slices.Equal(got, []string{"dep0", "mid0"}) {
		t.Fatalf("after the refused delete: %q published", got)
	}
	// GC keeps what a published path refers to, and deletes the rest.
	if err := publish(top2); err != nil {
		t.Fatal(err)
	}
	deleted, _, err := c.DeleteUnreferred([]string{mid, dep})
	if err != nil || len(deleted) != 0 {
		t.Fatalf("DeleteUnreferred(mid, dep) with top2 published: deleted %v, %v; want none", deleted, err)
	}
	deleted, freed, err := c.DeleteUnreferred([]string{top2, mid})
	if err != nil || !slices.Equal(deleted, []string{top2, mid}) || len(freed) != 2 {
		t.Fatalf("DeleteUnreferred(top2, mid): deleted %v, freed %d files, %v; want both", deleted, len(freed), err)
	}

	// Quarantine takes the referrers along.
	for _, k := range []string{mid, top1} {
		if err := publish(k); err != nil {
			t.Fatal(err)
		}
	}
	moved, err := c.Quarantine(dep, g.infos[dep].GetNarHash())
	if err != nil || len(moved) != 3 || moved[0] != dep {
		t.Fatalf("Quarantine(dep): moved %v, %v; want dep, then mid and top1", moved, err)
	}
	if got := published(); len(got) != 0 {
		t.Fatalf("after quarantining dep: %q published", got)
	}
	checkDerived(t, c, "after the quarantine")
}

// TestHostPathGone: a published path that refers to a path served only
// from the host's store (written before copies were taken at publish)
// goes into quarantine when the host path goes, and the startup check's
// scan reports it while it is there.
func TestHostPathGone(t *testing.T) {
	c, err := Open(filepath.Join(t.TempDir(), "catalog.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	g := newClosureGraph(rand.New(rand.NewPCG(8, 8)), 1, 1, 0)
	dep, mid := g.keys[0], g.keys[1]
	local := g.infos[dep]
	if err := c.PutLocal([]LocalPath{{Info: &indexv1.PathInfo{StorePath: local.GetStorePath(), NarHash: local.GetNarHash(), NarSize: 100}, Signed: true}}); err != nil {
		t.Fatal(err)
	}
	// As an older catalogue holds it: written without the check.
	info := g.infos[mid]
	if _, err := c.AddNarFile(fileKey(info), info.GetFile()); err != nil {
		t.Fatal(err)
	}
	if err := c.db.Update(func(tx *bolt.Tx) error { _, err := setPath(tx, pathsBucket, mid, info); return err }); err != nil {
		t.Fatal(err)
	}
	inc, err := c.IncompleteClosures()
	if err != nil || len(inc) != 1 || inc[0].HashPart != mid || len(inc[0].HostOnly) != 1 || len(inc[0].Missing) != 0 {
		t.Fatalf("IncompleteClosures: %+v, %v; want mid, its dep host-only", inc, err)
	}
	_, q, err := c.DeleteLocal([]string{dep})
	if err != nil || !slices.Equal(q, []string{mid}) {
		t.Fatalf("DeleteLocal(dep): quarantined %v, %v; want mid", q, err)
	}
	if e, err := c.Lookup(mid); err != nil || !e.Quarantined {
		t.Fatalf("mid after its host dependency went: %+v, %v; want it quarantined", e, err)
	}
	if inc, err := c.IncompleteClosures(); err != nil || len(inc) != 0 {
		t.Fatalf("IncompleteClosures after: %+v, %v; want none", inc, err)
	}
}

// TestFreedFileAndUpload: a NAR file freed by a delete and uploaded again
// before the deleter removes it stays on disk; a file removed before its
// upload is recorded is not recorded.
func TestFreedFileAndUpload(t *testing.T) {
	c, err := Open(filepath.Join(t.TempDir(), "catalog.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rng := rand.New(rand.NewPCG(9, 9))
	nf := &indexv1.NarFile{FileHash: randHash(rng), FileSize: 10, Compression: "none", NarHash: randHash(rng), NarSize: 10}
	key := fileKey(&indexv1.PathInfo{File: nf})
	var removed []string
	remove := func(f *indexv1.NarFile) error {
		removed = append(removed, f.GetFileHash())
		return nil
	}

	if _, err := c.AddNarFile(key, nf); err != nil {
		t.Fatal(err)
	}
	if err := c.RemoveFreed([]*indexv1.NarFile{nf}, remove); err != nil || len(removed) != 0 {
		t.Fatalf("RemoveFreed of a file recorded again: removed %v, %v; want it kept", removed, err)
	}
	// Freed by a delete.
	if err := c.db.Update(func(tx *bolt.Tx) error { _, err := setNarFile(tx, narsBucket, key, nil); return err }); err != nil {
		t.Fatal(err)
	}
	if err := c.RemoveFreed([]*indexv1.NarFile{nf}, remove); err != nil || len(removed) != 1 {
		t.Fatalf("RemoveFreed of a file no record names: removed %v, %v; want it removed", removed, err)
	}

	gone := errors.New("no such file")
	_, err = c.AddStoredNarFile(key, nf, func() error { return gone })
	if !errors.Is(err, fault.ErrPrecondition) {
		t.Fatalf("AddStoredNarFile of a file removed meanwhile: %v, want a precondition error", err)
	}
	if _, err := c.NarFile(key); !errors.Is(err, fault.ErrNotFound) {
		t.Fatalf("the removed file is recorded: %v", err)
	}
}
