package catalog_test

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/catalog"
	"github.com/nixcache/nixcache/services/index/internal/pathwatch"
)

// TestChanges: every catalogue method that changes what GetPathInfo
// answers publishes one event naming exactly the paths it changed, after
// its commit; a method that changes nothing publishes nothing.
func TestChanges(t *testing.T) {
	c := open(t, filepath.Join(t.TempDir(), "catalog.db"))
	defer c.Close()
	w := c.Changes().Subscribe()
	defer w.Close()

	fileX := strings.Repeat("0", 52) // valid nix32: Quarantine and DeletePaths parse it
	nf := &indexv1.NarFile{FileHash: "sha256:" + fileX, FileSize: 10, Compression: "none", NarHash: "sha256:n", NarSize: 10}
	info := func(hash string, sigs ...string) *indexv1.PathInfo {
		return &indexv1.PathInfo{StorePath: "/nix/store/" + hash + "-p", NarHash: "sha256:n", NarSize: 10, File: nf, Signatures: sigs}
	}
	hashD := strings.Repeat("d", 32)
	if _, err := c.AddNarFile(fileX, nf); err != nil {
		t.Fatal(err)
	}
	set := func(i *indexv1.PathInfo) func(*indexv1.PathInfo) (*indexv1.PathInfo, error) {
		return func(*indexv1.PathInfo) (*indexv1.PathInfo, error) { return i, nil }
	}
	const (
		published = indexv1.PathEventKind_PATH_EVENT_KIND_PUBLISHED
		removed   = indexv1.PathEventKind_PATH_EVENT_KIND_REMOVED
		changed   = indexv1.PathEventKind_PATH_EVENT_KIND_CHANGED
	)
	steps := []struct {
		name string
		do   func() error
		want string // "" for no event, else "<kind> <hash> ..."
	}{
		{"publish a", func() error { _, err := c.UpdatePathInfo(hashA, set(info(hashA, "k:1"))); return err }, "published a"},
		{"publish b", func() error { _, err := c.UpdatePathInfo(hashB, set(info(hashB, "k:1"))); return err }, "published b"},
		{"merge a signature", func() error { _, err := c.UpdatePathInfo(hashA, set(info(hashA, "k:1", "u:2"))); return err }, "changed a"},
		{"update to nothing", func() error { _, err := c.UpdatePathInfo(hashA, set(nil)); return err }, ""},
		{"failed update", func() error {
			_, err := c.UpdatePathInfo(hashA, func(*indexv1.PathInfo) (*indexv1.PathInfo, error) { return nil, errors.New("no") })
			if err == nil {
				return errors.New("UpdatePathInfo ignored fn's error")
			}
			return nil
		}, ""},
		{"re-sign a and b", func() error {
			_, err := c.ReplaceSignatures(map[string]catalog.SignatureUpdate{
				hashA: {NarHash: "sha256:n", Signatures: []string{"k2:1"}},
				hashB: {NarHash: "sha256:other", Signatures: []string{"k2:1"}}, // NAR changed meanwhile: left alone
			}, false)
			return err
		}, "changed a"},
		{"quarantine b", func() error { _, err := c.Quarantine(hashB, "sha256:n"); return err }, "removed b"},
		{"quarantine b again", func() error { _, err := c.Quarantine(hashB, "sha256:n"); return err }, ""},
		{"delete a, b (quarantined) and c (absent)", func() error { _, err := c.DeletePaths([]string{hashA, hashB, hashC}); return err }, "removed a"},
		{"local c and d", func() error {
			return c.PutLocal([]catalog.LocalPath{{Info: localInfo(hashC, "sha256:c")}, {Info: localInfo(hashD, "sha256:d", "k:d"), Signed: true}})
		}, "published c d"},
		{"sign c", func() error {
			_, err := c.SignedLocal([]*indexv1.PathInfo{localInfo(hashC, "sha256:c", "k:c")})
			return err
		}, "changed c"},
		{"local c again, unsigned over signed: kept", func() error {
			return c.PutLocal([]catalog.LocalPath{{Info: localInfo(hashC, "sha256:c")}})
		}, ""},
		{"delete local d and a (absent)", func() error { _, _, err := c.DeleteLocal([]string{hashD, hashA}); return err }, "removed d"},
	}
	names := map[string]string{hashA: "a", hashB: "b", hashC: "c", hashD: "d"}
	kinds := map[indexv1.PathEventKind]string{published: "published", removed: "removed", changed: "changed"}
	for _, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		var got []string
		for len(w.Events()) > 0 {
			ev := <-w.Events()
			hs := []string{kinds[ev.GetKind()]}
			for _, h := range ev.GetHashParts() {
				hs = append(hs, names[h])
			}
			// Several paths of one change may come in any order.
			slices.Sort(hs[1:])
			got = append(got, strings.Join(hs, " "))
		}
		if want := strings.Fields(s.want); s.want == "" && len(got) != 0 || s.want != "" && !slices.Equal(got, []string{strings.Join(want, " ")}) {
			t.Errorf("%s: events %q, want %q", s.name, got, s.want)
		}
	}

	if _, err := c.ClearLocal(); err != nil {
		t.Fatal(err)
	}
	if err := w.Err(); !errors.Is(err, pathwatch.ErrReset) {
		t.Errorf("after ClearLocal the watcher's Err = %v, want ErrReset (it must start over)", err)
	}
}

// TestChangesAfterCommit: when a watcher hears of a change, the change is
// already visible to a read.
func TestChangesAfterCommit(t *testing.T) {
	c := open(t, filepath.Join(t.TempDir(), "catalog.db"))
	defer c.Close()
	w := c.Changes().Subscribe()
	defer w.Close()
	errc := make(chan error, 1)
	go func() {
		for i := range 50 {
			h := fmt.Sprintf("%032d", i)
			ev := <-w.Events()
			if ev.GetHashParts()[0] != h {
				errc <- fmt.Errorf("event %v, want %s", ev, h)
				return
			}
			if _, err := c.PathInfo(h); err != nil {
				errc <- fmt.Errorf("on the event of %s, PathInfo: %w", h, err)
				return
			}
		}
		errc <- nil
	}()
	for i := range 50 {
		h := fmt.Sprintf("%032d", i)
		p := &indexv1.PathInfo{StorePath: "/nix/store/" + h + "-p", NarHash: "sha256:n", NarSize: 1}
		if _, err := c.UpdatePathInfo(h, func(*indexv1.PathInfo) (*indexv1.PathInfo, error) { return p, nil }); err != nil {
			t.Fatal(err)
		}
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}
