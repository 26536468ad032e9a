package catalog

import (
	"fmt"
	"slices"
	"strings"

	bolt "go.etcd.io/bbolt"

	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/fault"
)

// Closures never break: every published path's references are published.
//
// The invariant is kept by the write transactions themselves, not by the
// callers: bbolt runs one write transaction at a time, so a check made
// inside the transaction that commits a change cannot be overtaken by
// another change. Checking before (reading a snapshot, then writing in a
// later transaction) is what broke closures: a garbage collection planned
// on a snapshot deleted a path that a push published a referrer of in
// between, and a push checked its references, then committed after a
// delete. A lock around publish and delete would also work, but it would
// have to cover every writer (publish, upstream fetches, GC, DeletePath,
// quarantine, the host store's sync) and serialise signing and uploads
// with them; the transaction already serialises exactly the commits.
//
// So, in the transaction that commits:
//   - a path is published (UpdatePathInfo, Adopt) only if every reference
//     but itself is published, with that very store path, and its NAR
//     file is recorded (checkPublishable);
//   - paths are deleted (DeletePaths) only if no published path left
//     refers to them; garbage collection (DeleteUnreferred) keeps, instead,
//     those a path published since its plan refers to;
//   - a path taken out of what is served (Quarantine, a host path gone in
//     DeleteLocal or ClearLocal) takes its published referrers, directly
//     or not, into quarantine with it (quarantineReferrers).
//
// A reference served only from the host's store does not count as
// published: the publisher first takes the cache's own copy of it (Adopt),
// so that the host deleting it breaks nothing.

// checkPublishable returns an error of class fault.ErrPrecondition unless
// every reference of info (the path with hash part key) but itself is a
// published path and the NAR file it names is recorded.
func checkPublishable(tx *bolt.Tx, key string, info *indexv1.PathInfo) error {
	paths := tx.Bucket(pathsBucket)
	for _, ref := range info.GetReferences() {
		if len(ref) < 33 || ref[32] != '-' {
			return fault.Precondition("reference %q is not a store path", ref)
		}
		if ref[:32] == key {
			continue
		}
		v := paths.Get([]byte(ref[:32]))
		if v == nil {
			return fault.Precondition("reference %s is not in the cache", ref)
		}
		p, err := decodePath(ref[:32], v)
		if err != nil {
			return err
		}
		if !strings.HasSuffix(p.GetStorePath(), "/"+ref) {
			return fault.Precondition("reference %s is not in the cache (its hash part is %s)", ref, p.GetStorePath())
		}
	}
	if fk := fileKey(info); fk != "" && tx.Bucket(narsBucket).Get([]byte(fk)) == nil {
		return fault.Precondition("the NAR file %s of %s is not in the cache", info.GetFile().GetFileHash(), info.GetStorePath())
	}
	return nil
}

// publishedReferrers returns the hash parts of the published paths that
// refer to the path with this hash part, sorted.
func publishedReferrers(tx *bolt.Tx, hashPart string) []string {
	paths := tx.Bucket(pathsBucket)
	var out []string
	for _, r := range referrers(tx, hashPart) {
		if paths.Get([]byte(r)) != nil {
			out = append(out, r)
		}
	}
	return out
}

// quarantineReferrers moves every published path that refers, directly
// or not, to one of hashParts into quarantine (their NAR files stay
// recorded: nothing is wrong with them), and returns their hash parts.
// Pushing such a path again publishes it again, once what it refers to is
// back.
func quarantineReferrers(tx *bolt.Tx, hashParts ...string) ([]string, error) {
	var moved []string
	seen := map[string]bool{}
	todo := slices.Clone(hashParts)
	for len(todo) > 0 {
		h := todo[len(todo)-1]
		todo = todo[:len(todo)-1]
		for _, r := range publishedReferrers(tx, h) {
			if seen[r] {
				continue
			}
			seen[r] = true
			info, err := setPath(tx, pathsBucket, r, nil)
			if err != nil {
				return nil, err
			}
			if _, err := setPath(tx, quarantineBucket, r, info); err != nil {
				return nil, err
			}
			moved = append(moved, r)
			todo = append(todo, r)
		}
	}
	slices.Sort(moved)
	return moved, nil
}

// Adopt publishes, in one transaction, the paths of adopted that are not
// published yet (copies the cache took of paths it served from the host's
// store: their NAR files recorded, their records signed), then applies fn
// to the path with this hash part as UpdatePathInfo does. Every record
// published is checked as UpdatePathInfo checks it, so adopted must list
// what refers to what after it (references first). Nothing is published
// unless all is.
func (c *Catalog) Adopt(adopted []*indexv1.PathInfo, hashPart string, fn func(old *indexv1.PathInfo) (*indexv1.PathInfo, error)) (*indexv1.PathInfo, error) {
	return c.update(adopted, hashPart, fn)
}

// Incomplete is a published path whose closure the catalogue lacks.
type Incomplete struct {
	HashPart string
	Info     *indexv1.PathInfo
	// Missing are the references that are not published at all;
	// HostOnly those served only from the host's store (a path published
	// before the cache copied such references at publish).
	Missing, HostOnly []string
}

// IncompleteClosures returns the published paths with a reference that is
// not published, in one read transaction.
func (c *Catalog) IncompleteClosures() ([]Incomplete, error) {
	var out []Incomplete
	err := c.db.View(func(tx *bolt.Tx) error {
		paths, local := tx.Bucket(pathsBucket), tx.Bucket(localBucket)
		return paths.ForEach(func(k, v []byte) error {
			info, err := decodePath(string(k), v)
			if err != nil {
				return err
			}
			var inc Incomplete
			for _, ref := range info.GetReferences() {
				if len(ref) < 33 || ref[:32] == string(k) {
					continue
				}
				key := []byte(ref[:32])
				switch {
				case paths.Get(key) != nil:
				case local.Get(key) != nil:
					inc.HostOnly = append(inc.HostOnly, ref)
				default:
					inc.Missing = append(inc.Missing, ref)
				}
			}
			if inc.Missing != nil || inc.HostOnly != nil {
				inc.HashPart, inc.Info = string(k), info
				out = append(out, inc)
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("check closures: %w", err)
	}
	return out, nil
}
