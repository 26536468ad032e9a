package catalog

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/fault"
)

// The admin buckets (package admin): what operators look at and decide.
var (
	// accessBucket maps a hash part to its last NAR download: 8 bytes of
	// unix time then 8 bytes of download count, big-endian.
	accessBucket = []byte("access")
	// pinsBucket maps a hash part to its marshalled indexv1.Pin.
	pinsBucket = []byte("pins")
	// quarantineBucket holds the indexv1.PathInfo records of the paths
	// that failed verification, moved out of pathsBucket so that nothing
	// serves them.
	quarantineBucket = []byte("quarantine")
	// quarantineNarsBucket holds the records of the NAR files that failed
	// verification, moved out of narsBucket.
	quarantineNarsBucket = []byte("quarantine-nars")
)

// adminBuckets are created at Open.
var adminBuckets = [][]byte{accessBucket, pinsBucket, quarantineBucket, quarantineNarsBucket}

// Access is the download record of one path.
type Access struct {
	// Last is the unix time of the last download.
	Last int64
	// Downloads counts them.
	Downloads uint64
}

func encodeAccess(a Access) []byte {
	v := make([]byte, 16)
	binary.BigEndian.PutUint64(v, uint64(a.Last))
	binary.BigEndian.PutUint64(v[8:], a.Downloads)
	return v
}

func decodeAccess(v []byte) Access {
	if len(v) != 16 {
		return Access{}
	}
	return Access{Last: int64(binary.BigEndian.Uint64(v)), Downloads: binary.BigEndian.Uint64(v[8:])}
}

// AddAccess merges a batch of downloads into the access records: the
// later time wins, the counts add up.
func (c *Catalog) AddAccess(batch map[string]Access) error {
	if len(batch) == 0 {
		return nil
	}
	err := c.write(func(tx *bolt.Tx) error {
		b := tx.Bucket(accessBucket)
		for h, a := range batch {
			old := decodeAccess(b.Get([]byte(h)))
			old.Last = max(old.Last, a.Last)
			old.Downloads += a.Downloads
			if err := b.Put([]byte(h), encodeAccess(old)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("record downloads: %w", err)
	}
	return nil
}

// AccessOf returns the download record of a path (zero if never).
func (c *Catalog) AccessOf(hashPart string) (Access, error) {
	var a Access
	err := c.db.View(func(tx *bolt.Tx) error {
		a = decodeAccess(tx.Bucket(accessBucket).Get([]byte(hashPart)))
		return nil
	})
	if err != nil {
		return Access{}, fmt.Errorf("read downloads of %s: %w", hashPart, err)
	}
	return a, nil
}

// Entry is one catalogued path as the admin API sees it.
type Entry struct {
	HashPart    string
	Info        *indexv1.PathInfo
	Local       bool
	Quarantined bool
	Pin         *indexv1.Pin
	Access      Access
}

// Snapshot is every pushed path (published or quarantined), with its pin
// and downloads, read in one transaction.
type Snapshot struct {
	Paths map[string]*Entry
	// Local counts the local paths not also pushed.
	Local int
	// LocalNarBytes sums their NarSize.
	LocalNarBytes uint64
	// FileUsedElsewhere, when set, says for each NAR file of Paths (by
	// FileHash) whether a pushed path not in Paths is served from it.
	FileUsedElsewhere map[string]bool
}

// Snapshot reads every pushed path; with withLocal it also counts the
// local ones.
func (c *Catalog) Snapshot(withLocal bool) (*Snapshot, error) {
	s := &Snapshot{Paths: map[string]*Entry{}}
	err := c.db.View(func(tx *bolt.Tx) error {
		pins, access := tx.Bucket(pinsBucket), tx.Bucket(accessBucket)
		for _, src := range []struct {
			bucket      []byte
			quarantined bool
		}{{pathsBucket, false}, {quarantineBucket, true}} {
			err := tx.Bucket(src.bucket).ForEach(func(k, v []byte) error {
				e, err := entry(k, v, pins, access)
				if err != nil {
					return err
				}
				e.Quarantined = src.quarantined
				s.Paths[e.HashPart] = e
				return nil
			})
			if err != nil {
				return err
			}
		}
		if !withLocal {
			return nil
		}
		return tx.Bucket(localBucket).ForEach(func(k, v []byte) error {
			if s.Paths[string(k)] != nil {
				return nil
			}
			info, err := decodePath(string(k), v)
			if err != nil {
				return err
			}
			s.Local++
			s.LocalNarBytes += info.GetNarSize()
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("read catalogue: %w", err)
	}
	return s, nil
}

func entry(k, v []byte, pins, access *bolt.Bucket) (*Entry, error) {
	info, err := decodePath(string(k), v)
	if err != nil {
		return nil, err
	}
	e := &Entry{HashPart: string(k), Info: info}
	if pv := pins.Get(k); pv != nil {
		e.Pin = new(indexv1.Pin)
		if err := proto.Unmarshal(pv, e.Pin); err != nil {
			return nil, fmt.Errorf("decode pin %s: %w", k, err)
		}
	}
	e.Access = decodeAccess(access.Get(k))
	return e, nil
}

// Lookup returns the path with this hash part: pushed, quarantined or
// else local; an error of class fault.ErrNotFound when none.
func (c *Catalog) Lookup(hashPart string) (*Entry, error) {
	var e *Entry
	err := c.db.View(func(tx *bolt.Tx) error {
		pins, access := tx.Bucket(pinsBucket), tx.Bucket(accessBucket)
		for _, src := range []struct {
			bucket             []byte
			quarantined, local bool
		}{{pathsBucket, false, false}, {quarantineBucket, true, false}, {localBucket, false, true}} {
			v := tx.Bucket(src.bucket).Get([]byte(hashPart))
			if v == nil {
				continue
			}
			var err error
			if e, err = entry([]byte(hashPart), v, pins, access); err != nil {
				return err
			}
			e.Quarantined, e.Local = src.quarantined, src.local
			return nil
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read path %s: %w", hashPart, err)
	}
	if e == nil {
		return nil, fault.NotFound("store path %s is not in the cache", hashPart)
	}
	return e, nil
}

// List returns at most limit paths (pushed, quarantined, local) whose
// hash part sorts after `after` and whose name contains query, in hash part
// (that is, store path) order, and whether more follow.
func (c *Catalog) List(after, query string, limit int) ([]*Entry, bool, error) {
	var out []*Entry
	more := false
	err := c.db.View(func(tx *bolt.Tx) error {
		pins, access := tx.Bucket(pinsBucket), tx.Bucket(accessBucket)
		srcs := []struct {
			cur                *bolt.Cursor
			k, v               []byte
			quarantined, local bool
		}{
			{cur: tx.Bucket(pathsBucket).Cursor()},
			{cur: tx.Bucket(quarantineBucket).Cursor(), quarantined: true},
			{cur: tx.Bucket(localBucket).Cursor(), local: true},
		}
		for i := range srcs {
			srcs[i].k, srcs[i].v = srcs[i].cur.Seek([]byte(after))
			if srcs[i].k != nil && string(srcs[i].k) == after {
				srcs[i].k, srcs[i].v = srcs[i].cur.Next()
			}
		}
		for {
			// The smallest key; pushed before quarantined before local.
			best := -1
			for i := range srcs {
				if srcs[i].k != nil && (best < 0 || bytes.Compare(srcs[i].k, srcs[best].k) < 0) { //nolint:gosec // G602: best >= 0 here
					best = i
				}
			}
			if best < 0 {
				return nil
			}
			k, v := srcs[best].k, srcs[best].v
			for i := range srcs {
				if srcs[i].k != nil && bytes.Equal(srcs[i].k, k) {
					srcs[i].k, srcs[i].v = srcs[i].cur.Next()
				}
			}
			e, err := entry(k, v, pins, access)
			if err != nil {
				return err
			}
			e.Quarantined, e.Local = srcs[best].quarantined, srcs[best].local
			if query != "" && !strings.Contains(nameOf(e.Info.GetStorePath()), query) {
				continue
			}
			if len(out) == limit {
				more = true
				return nil
			}
			out = append(out, e)
		}
	})
	if err != nil {
		return nil, false, fmt.Errorf("list paths: %w", err)
	}
	return out, more, nil
}

// nameOf is the name of a store path, after "<hash>-".
func nameOf(storePath string) string {
	base := storePath[strings.LastIndexByte(storePath, '/')+1:]
	if len(base) > 33 {
		return base[33:]
	}
	return ""
}

// PutPin records a pin of a published path.
func (c *Catalog) PutPin(hashPart string, pin *indexv1.Pin) error {
	err := c.write(func(tx *bolt.Tx) error {
		if tx.Bucket(pathsBucket).Get([]byte(hashPart)) == nil && tx.Bucket(quarantineBucket).Get([]byte(hashPart)) == nil {
			return fault.NotFound("store path %s is not a pushed path of the cache", hashPart)
		}
		v, err := proto.MarshalOptions{Deterministic: true}.Marshal(pin)
		if err != nil {
			return fmt.Errorf("encode: %w", err)
		}
		return setPin(tx, hashPart, v)
	})
	if err != nil {
		return fmt.Errorf("pin %s: %w", hashPart, err)
	}
	return nil
}

// DeletePin removes a pin; an error of class fault.ErrNotFound if none.
func (c *Catalog) DeletePin(hashPart string) error {
	err := c.write(func(tx *bolt.Tx) error {
		if tx.Bucket(pinsBucket).Get([]byte(hashPart)) == nil {
			return fault.NotFound("store path %s is not pinned", hashPart)
		}
		return setPin(tx, hashPart, nil)
	})
	if err != nil {
		return fmt.Errorf("unpin %s: %w", hashPart, err)
	}
	return nil
}

// Pins lists the pins in hash part order.
func (c *Catalog) Pins() ([]*indexv1.Pin, error) {
	var pins []*indexv1.Pin
	err := c.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(pinsBucket).ForEach(func(k, v []byte) error {
			p := new(indexv1.Pin)
			if err := proto.Unmarshal(v, p); err != nil {
				return fmt.Errorf("decode pin %s: %w", k, err)
			}
			pins = append(pins, p)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list pins: %w", err)
	}
	return pins, nil
}

// Quarantine moves the published path with this hash part, if its record
// still has narHash, and the record of its NAR file out of what is
// served; its published referrers, directly or not, go into quarantine
// with it (closure.go). It returns the hash parts moved, the path's
// first; none when it did not move the path.
func (c *Catalog) Quarantine(hashPart, narHash string) ([]string, error) {
	var moved []string
	err := c.write(func(tx *bolt.Tx) error {
		moved = nil
		v := tx.Bucket(pathsBucket).Get([]byte(hashPart))
		if v == nil {
			return nil
		}
		info, err := decodePath(hashPart, v)
		if err != nil {
			return err
		}
		if info.GetNarHash() != narHash {
			return nil
		}
		if _, err := setPath(tx, pathsBucket, hashPart, nil); err != nil {
			return err
		}
		if fk := fileKey(info); fk != "" {
			if nv := tx.Bucket(narsBucket).Get([]byte(fk)); nv != nil {
				nf, err := decodeNarFile(nv)
				if err != nil {
					return err
				}
				if _, err := setNarFile(tx, narsBucket, fk, nil); err != nil {
					return err
				}
				if _, err := setNarFile(tx, quarantineNarsBucket, fk, nf); err != nil {
					return err
				}
			}
		}
		if _, err = setPath(tx, quarantineBucket, hashPart, info); err != nil {
			return err
		}
		referrers, err := quarantineReferrers(tx, hashPart)
		if err != nil {
			return err
		}
		moved = append([]string{hashPart}, referrers...)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("quarantine %s: %w", hashPart, err)
	}
	c.changes.Publish(indexv1.PathEventKind_PATH_EVENT_KIND_REMOVED, moved...)
	return moved, nil
}

// DeletePaths deletes the pushed (or quarantined) paths with these hash
// parts, their pins and download records, and the records of the NAR
// files no remaining path uses, which it returns: the caller removes those
// files from disk after. If a published path left would refer to one of
// them (published since the caller looked), nothing is deleted and the
// error is of class fault.ErrPrecondition.
func (c *Catalog) DeletePaths(hashParts []string) ([]*indexv1.NarFile, error) {
	var freed []*indexv1.NarFile
	var removed []string
	err := c.write(func(tx *bolt.Tx) error {
		var err error
		freed, removed, err = deletePaths(tx, hashParts)
		if err != nil {
			return err
		}
		for _, h := range hashParts {
			if refs := publishedReferrers(tx, h); len(refs) > 0 {
				return fault.Precondition("store path %s is referred to by %s, published meanwhile: delete those first",
					h, strings.Join(refs, ", "))
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("delete paths: %w", err)
	}
	c.changes.Publish(indexv1.PathEventKind_PATH_EVENT_KIND_REMOVED, removed...)
	return freed, nil
}

// RemoveFreed calls remove for each NAR file whose record a deletion
// freed, in a write transaction that first makes sure no record names the
// file again (uploaded since the deletion): that upload's file is kept.
// It returns what remove failed to do.
func (c *Catalog) RemoveFreed(freed []*indexv1.NarFile, remove func(*indexv1.NarFile) error) error {
	var errs []error
	for _, nf := range freed {
		key := fileKey(&indexv1.PathInfo{File: nf})
		err := c.write(func(tx *bolt.Tx) error {
			if key != "" && (tx.Bucket(narsBucket).Get([]byte(key)) != nil || tx.Bucket(quarantineNarsBucket).Get([]byte(key)) != nil) {
				return nil
			}
			if err := remove(nf); err != nil {
				errs = append(errs, err)
			}
			return nil
		})
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// DeleteUnreferred deletes, as DeletePaths does, those of the paths with
// these hash parts that no published path left refers to, and returns
// them: garbage collection plans on a snapshot, and a path published
// since then may refer to a path it planned to delete; that path is kept,
// and so is, in turn, what it refers to.
func (c *Catalog) DeleteUnreferred(hashParts []string) (deleted []string, freed []*indexv1.NarFile, err error) {
	var removed []string
	err = c.write(func(tx *bolt.Tx) error {
		// Keep every path with a published referrer that is not deleted
		// too, until no more are kept.
		doomed := map[string]bool{}
		for _, h := range hashParts {
			doomed[h] = true
		}
		for changed := true; changed; {
			changed = false
			for _, h := range hashParts {
				if !doomed[h] {
					continue
				}
				for _, r := range publishedReferrers(tx, h) {
					if !doomed[r] {
						doomed[h], changed = false, true
						break
					}
				}
			}
		}
		deleted = slices.DeleteFunc(slices.Clone(hashParts), func(h string) bool { return !doomed[h] })
		var err error
		freed, removed, err = deletePaths(tx, deleted)
		return err
	})
	if err != nil {
		return nil, nil, fmt.Errorf("delete paths: %w", err)
	}
	c.changes.Publish(indexv1.PathEventKind_PATH_EVENT_KIND_REMOVED, removed...)
	return deleted, freed, nil
}

// deletePaths deletes the pushed (or quarantined) paths with these hash
// parts, their pins and download records, and the records of the NAR
// files no remaining path uses; it returns those records and the hash
// parts of the published paths it deleted.
func deletePaths(tx *bolt.Tx, hashParts []string) (freed []*indexv1.NarFile, removed []string, err error) {
	candidates := map[string]bool{}
	for _, h := range hashParts {
		for _, name := range [][]byte{pathsBucket, quarantineBucket} {
			old, err := setPath(tx, name, h, nil)
			if err != nil {
				return nil, nil, err
			}
			if old != nil && bytes.Equal(name, pathsBucket) {
				removed = append(removed, h)
			}
			if fk := fileKey(old); fk != "" {
				candidates[fk] = true
			}
		}
		if err := setPin(tx, h, nil); err != nil {
			return nil, nil, err
		}
		if err := tx.Bucket(accessBucket).Delete([]byte(h)); err != nil {
			return nil, nil, err
		}
	}
	// Files still used by a remaining path stay (the file users bucket
	// says which).
	for _, fh := range slices.Sorted(mapsKeys(candidates)) {
		used := false
		fileUsers(tx, fh, func(string) bool {
			used = true
			return false
		})
		if used {
			continue
		}
		for _, name := range [][]byte{narsBucket, quarantineNarsBucket} {
			v := tx.Bucket(name).Get([]byte(fh))
			if v == nil {
				continue
			}
			nf, err := decodeNarFile(v)
			if err != nil {
				return nil, nil, fmt.Errorf("NAR file %s: %w", fh, err)
			}
			freed = append(freed, nf)
			if _, err := setNarFile(tx, name, fh, nil); err != nil {
				return nil, nil, err
			}
		}
	}
	return freed, removed, nil
}

func mapsKeys(m map[string]bool) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// ReplaceSignatures sets the signatures of pushed paths (published or
// quarantined) or, with local, of signed local paths: sigs maps a hash
// part to the NAR hash its signatures were made for and the signatures. A
// record whose NAR hash changed meanwhile is left alone. It returns how
// many records it changed.
func (c *Catalog) ReplaceSignatures(sigs map[string]SignatureUpdate, local bool) (int, error) {
	n := 0
	buckets := [][]byte{pathsBucket, quarantineBucket}
	if local {
		buckets = [][]byte{localBucket}
	}
	var changed []string
	err := c.write(func(tx *bolt.Tx) error {
		n, changed = 0, nil
		unsigned := tx.Bucket(localUnsignedBucket)
		for h, u := range sigs {
			for _, name := range buckets {
				b := tx.Bucket(name)
				v := b.Get([]byte(h))
				if v == nil {
					continue
				}
				if bytes.Equal(name, localBucket) && unsigned.Get([]byte(h)) != nil {
					continue
				}
				info, err := decodePath(h, v)
				if err != nil {
					return err
				}
				if info.GetNarHash() != u.NarHash || slices.Equal(info.GetSignatures(), u.Signatures) {
					continue
				}
				info.Signatures = u.Signatures
				if _, err := setPath(tx, name, h, info); err != nil {
					return err
				}
				n++
				if !bytes.Equal(name, quarantineBucket) {
					changed = append(changed, h)
				}
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("replace signatures: %w", err)
	}
	c.changes.Publish(indexv1.PathEventKind_PATH_EVENT_KIND_CHANGED, changed...)
	return n, nil
}

// SignatureUpdate is the new signatures of one path.
type SignatureUpdate struct {
	NarHash    string
	Signatures []string
}

// SignedInfos returns every path whose signatures the cache's keys
// maintain: pushed (published or quarantined) and signed local paths,
// keyed by hash part (a pushed path shadows a local one).
func (c *Catalog) SignedInfos() (pushed, local map[string]*indexv1.PathInfo, err error) {
	pushed, local = map[string]*indexv1.PathInfo{}, map[string]*indexv1.PathInfo{}
	err = c.db.View(func(tx *bolt.Tx) error {
		unsigned := tx.Bucket(localUnsignedBucket)
		for _, src := range []struct {
			bucket []byte
			into   map[string]*indexv1.PathInfo
		}{{pathsBucket, pushed}, {quarantineBucket, pushed}, {localBucket, local}} {
			err := tx.Bucket(src.bucket).ForEach(func(k, v []byte) error {
				if src.into == nil || (bytes.Equal(src.bucket, localBucket) && unsigned.Get(k) != nil) {
					return nil
				}
				info, err := decodePath(string(k), v)
				if err != nil {
					return err
				}
				src.into[string(k)] = info
				return nil
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("read signed paths: %w", err)
	}
	return pushed, local, nil
}
