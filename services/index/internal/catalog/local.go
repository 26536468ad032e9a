package catalog

import (
	"bytes"
	"fmt"

	bolt "go.etcd.io/bbolt"

	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/fault"
)

// The local store's buckets: the paths of the host's Nix store the index
// serves (package localstore), kept apart from the published paths so that
// nothing done to them can lose or change a pushed path.
var (
	// localBucket maps a hash part to the indexv1.PathInfo record of a
	// valid path of the host's store (without a file: its NAR is dumped
	// from the store).
	localBucket = []byte("local")
	// localUnsignedBucket holds (as keys, with empty values) the hash parts
	// of the local paths not yet signed with the cache's keys.
	localUnsignedBucket = []byte("local-unsigned")
)

// LocalPath is a path of the host's store as recorded.
type LocalPath struct {
	Info *indexv1.PathInfo
	// Signed is set once Info carries the cache's signatures.
	Signed bool
}

// LocalPathInfo returns the local path with this hash part and whether it
// is signed, or an error of class fault.ErrNotFound. The info is marked
// HostStore and, when the index keeps a compressed copy of its NAR
// (hostnar.go), names it (File, Url).
func (c *Catalog) LocalPathInfo(hashPart string) (*indexv1.PathInfo, bool, error) {
	var info *indexv1.PathInfo
	var found, unsigned bool
	err := c.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(localBucket).Get([]byte(hashPart))
		if v == nil {
			return nil
		}
		found = true
		unsigned = tx.Bucket(localUnsignedBucket).Get([]byte(hashPart)) != nil
		var err error
		if info, err = decodePath(hashPart, v); err != nil {
			return err
		}
		return withHostNar(tx, hashPart, info)
	})
	if err != nil {
		return nil, false, fmt.Errorf("read local path %s: %w", hashPart, err)
	}
	if !found {
		return nil, false, fault.NotFound("store path %s is not in the cache", hashPart)
	}
	return info, !unsigned, nil
}

// PutLocal records local paths, keyed by the hash parts of their store
// paths, replacing what is there; except that an unsigned record never
// replaces a signed one of the same path and NAR hash.
func (c *Catalog) PutLocal(paths []LocalPath) error {
	var published, changed []string
	err := c.write(func(tx *bolt.Tx) error {
		published, changed = nil, nil
		b, unsigned := tx.Bucket(localBucket), tx.Bucket(localUnsignedBucket)
		for _, p := range paths {
			key, err := localKey(p.Info)
			if err != nil {
				return err
			}
			old := b.Get(key)
			if !p.Signed && unsigned.Get(key) == nil && old != nil && sameLocal(key, old, p.Info) {
				continue
			}
			if old == nil {
				published = append(published, string(key))
			} else {
				changed = append(changed, string(key))
			}
			if _, err := setPath(tx, localBucket, string(key), withoutHostNar(p.Info)); err != nil {
				return err
			}
			if err := setUnsigned(tx, key, !p.Signed); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("record local paths: %w", err)
	}
	c.changes.Publish(indexv1.PathEventKind_PATH_EVENT_KIND_PUBLISHED, published...)
	c.changes.Publish(indexv1.PathEventKind_PATH_EVENT_KIND_CHANGED, changed...)
	return nil
}

// SignedLocal replaces unsigned local paths by their signed infos, for
// those still recorded with the same store path and NAR hash (the sync may
// have dropped a path while it was being signed). It returns how many it
// replaced.
func (c *Catalog) SignedLocal(infos []*indexv1.PathInfo) (int, error) {
	n := 0
	var changed []string
	err := c.write(func(tx *bolt.Tx) error {
		n, changed = 0, nil
		b := tx.Bucket(localBucket)
		for _, info := range infos {
			key, err := localKey(info)
			if err != nil {
				return err
			}
			if old := b.Get(key); old == nil || !sameLocal(key, old, info) {
				continue
			}
			if _, err := setPath(tx, localBucket, string(key), withoutHostNar(info)); err != nil {
				return err
			}
			if err := setUnsigned(tx, key, false); err != nil {
				return err
			}
			n++
			changed = append(changed, string(key))
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("record signatures of local paths: %w", err)
	}
	c.changes.Publish(indexv1.PathEventKind_PATH_EVENT_KIND_CHANGED, changed...)
	return n, nil
}

// DeleteLocal forgets the local paths with these hash parts, and the
// compressed copies of their NARs, which it returns for the caller to
// remove the files. A published path that refers to one of them and not
// to a pushed copy (published before the cache took copies of such
// references) goes into quarantine, with its referrers (closure.go): the
// host no longer has its closure. It also returns the hash parts
// quarantined.
func (c *Catalog) DeleteLocal(hashParts []string) (copies []HostNar, quarantined []string, err error) {
	var removed []string
	err = c.write(func(tx *bolt.Tx) error {
		removed, copies = nil, nil
		var gone []string
		for _, h := range hashParts {
			nf, err := dropHostNar(tx, h)
			if err != nil {
				return err
			}
			if nf != nil {
				copies = append(copies, HostNar{HashPart: h, File: nf})
			}
			if err := dropRetired(tx, h); err != nil {
				return err
			}
			old, err := setPath(tx, localBucket, h, nil)
			if err != nil {
				return err
			}
			if old != nil {
				removed = append(removed, h)
				if tx.Bucket(pathsBucket).Get([]byte(h)) == nil {
					gone = append(gone, h)
				}
			}
			if err := setUnsigned(tx, []byte(h), false); err != nil {
				return err
			}
		}
		var err error
		quarantined, err = quarantineReferrers(tx, gone...)
		return err
	})
	if err != nil {
		return nil, nil, fmt.Errorf("delete local paths: %w", err)
	}
	c.changes.Publish(indexv1.PathEventKind_PATH_EVENT_KIND_REMOVED, removed...)
	c.changes.Publish(indexv1.PathEventKind_PATH_EVENT_KIND_REMOVED, quarantined...)
	return copies, quarantined, nil
}

// ClearLocal forgets every local path, and the compressed copies of their
// NARs (whose files the caller removes); published paths that refer to one
// and not to a pushed copy go into quarantine, as in DeleteLocal. It
// returns the hash parts quarantined.
func (c *Catalog) ClearLocal() ([]string, error) {
	var quarantined []string
	err := c.write(func(tx *bolt.Tx) error {
		var gone []string
		paths := tx.Bucket(pathsBucket)
		err := tx.Bucket(localBucket).ForEach(func(k, _ []byte) error {
			if paths.Get(k) == nil {
				gone = append(gone, string(k))
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, name := range [][]byte{localBucket, localUnsignedBucket, hostNarsBucket, hostNarsRetiredBucket, hostNarFilesBucket} {
			if err := tx.DeleteBucket(name); err != nil {
				return err
			}
			if _, err := tx.CreateBucket(name); err != nil {
				return err
			}
		}
		for _, name := range []string{cLocal, cLocalBytes, cLocalUnsigned, cShadowed, cShadowedBytes} {
			if err := tx.Bucket(statsBucket).Delete([]byte(name)); err != nil {
				return err
			}
		}
		quarantined, err = quarantineReferrers(tx, gone...)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("clear local paths: %w", err)
	}
	// Watchers cached what they may no longer see: they start over.
	c.changes.Reset()
	return quarantined, nil
}

// DiffLocal compares the local paths recorded with hashParts, which must
// be sorted: it returns the indices in hashParts of those not recorded, and
// the recorded hash parts that are not in hashParts. It walks the bucket
// in key order beside hashParts, holding nothing else in memory.
func (c *Catalog) DiffLocal(hashParts []string) (missing []int, extra []string, err error) {
	err = c.db.View(func(tx *bolt.Tx) error {
		cur := tx.Bucket(localBucket).Cursor()
		k, _ := cur.First()
		i := 0
		for k != nil || i < len(hashParts) {
			var cmp int
			switch {
			case k == nil:
				cmp = 1
			case i == len(hashParts):
				cmp = -1
			default:
				cmp = bytes.Compare(k, []byte(hashParts[i]))
			}
			switch {
			case cmp < 0:
				extra = append(extra, string(k))
				k, _ = cur.Next()
			case cmp > 0:
				missing = append(missing, i)
				i++
			default:
				k, _ = cur.Next()
				i++
			}
		}
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("compare local paths: %w", err)
	}
	return missing, extra, nil
}

// UnsignedLocal returns at most limit of the local paths not yet signed.
func (c *Catalog) UnsignedLocal(limit int) ([]*indexv1.PathInfo, error) {
	var infos []*indexv1.PathInfo
	err := c.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(localBucket)
		cur := tx.Bucket(localUnsignedBucket).Cursor()
		for k, _ := cur.First(); k != nil && len(infos) < limit; k, _ = cur.Next() {
			v := b.Get(k)
			if v == nil {
				continue
			}
			info, err := decodePath(string(k), v)
			if err != nil {
				return err
			}
			infos = append(infos, info)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list unsigned local paths: %w", err)
	}
	return infos, nil
}

// PresentLocal returns the hash parts, in the order given and without
// repeats, of the local paths recorded, signed or not.
func (c *Catalog) PresentLocal(hashParts []string) ([]string, error) {
	var present []string
	err := c.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(localBucket)
		seen := make(map[string]bool, len(hashParts))
		for _, h := range hashParts {
			if !seen[h] && b.Get([]byte(h)) != nil {
				present = append(present, h)
			}
			seen[h] = true
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("check local paths: %w", err)
	}
	return present, nil
}

// localKey is the key of info: its store path's hash part.
func localKey(info *indexv1.PathInfo) ([]byte, error) {
	sp := info.GetStorePath()
	i := bytes.LastIndexByte([]byte(sp), '/')
	if i < 0 || len(sp)-i-1 < 33 {
		return nil, fmt.Errorf("local path %q: not a store path", sp)
	}
	return []byte(sp[i+1 : i+33]), nil
}

// sameLocal reports whether the stored record old is of the same store
// path and NAR as info.
func sameLocal(key, old []byte, info *indexv1.PathInfo) bool {
	o, err := decodePath(string(key), old)
	if err != nil {
		return false
	}
	return o.GetStorePath() == info.GetStorePath() && o.GetNarHash() == info.GetNarHash()
}
