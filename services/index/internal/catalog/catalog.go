// Package catalog is the index's record of what it holds: the NAR files
// uploaded (by file hash), the store paths published (by hash part) and,
// apart from them, the paths of the host's own store that it serves
// (local.go), in one bbolt database. Records are compact encodings of
// nixcache.index.v1 messages (record.go); what is derived from them (running
// totals, referrers, NAR file users: derived.go) is kept in the same
// transactions; an older catalogue is migrated at Open (migrate.go).
package catalog

import (
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/fault"
	"github.com/nixcache/nixcache/services/index/internal/pathwatch"
)

// Buckets, created at Open.
var (
	// pathsBucket maps a store path's 32-character hash part to its
	// indexv1.PathInfo (record.go).
	pathsBucket = []byte("paths")
	// narsBucket maps a NAR file's hash (the nix32 digest alone) to its
	// indexv1.NarFile and the number of pushed paths it serves (record.go).
	narsBucket = []byte("nars")
)

// Catalog is an open catalogue database. It is safe for concurrent use.
type Catalog struct {
	db *bolt.DB
	// changes hears of every committed change to what GetPathInfo
	// answers: a pushed or local path published, removed or changed.
	changes *pathwatch.Hub
	// beforeCommit, set by tests, sees the state each write transaction
	// is about to commit.
	beforeCommit func(tx *bolt.Tx)
}

// write runs fn in a write transaction.
func (c *Catalog) write(fn func(tx *bolt.Tx) error) error {
	return c.db.Update(func(tx *bolt.Tx) error {
		if err := fn(tx); err != nil {
			return err
		}
		if c.beforeCommit != nil {
			c.beforeCommit(tx)
		}
		return nil
	})
}

// Open opens (creating if needed) the catalogue database at path. A
// catalogue of an older schema is migrated first (migrate.go): rewritten
// into a new file that then replaces it.
func Open(path string) (*Catalog, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return nil, fmt.Errorf("open catalog %s: %w", path, err)
	}
	// Before anything is written: a catalogue of a later version (an index
	// downgraded) is left exactly as it is.
	if err := refuseNewer(db); err != nil {
		db.Close()
		return nil, fmt.Errorf("open catalog %s: %w", path, err)
	}
	if err := db.Update(createBuckets); err != nil {
		db.Close()
		return nil, fmt.Errorf("open catalog %s: %w", path, err)
	}
	up, err := upgrade(path, db)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open catalog %s: %w", path, err)
	}
	return &Catalog{db: up, changes: pathwatch.NewHub(pathwatch.DefaultBuffer)}, nil
}

// Changes is where the catalogue publishes its changes to served paths,
// after each commit (IndexService.WatchPaths subscribes there).
func (c *Catalog) Changes() *pathwatch.Hub { return c.changes }

// Close closes the database.
func (c *Catalog) Close() error {
	if err := c.db.Close(); err != nil {
		return fmt.Errorf("close catalog: %w", err)
	}
	return nil
}

// NarFile returns the record of the NAR file whose hash has nix32 digest
// fileHash, or an error of class fault.ErrNotFound.
func (c *Catalog) NarFile(fileHash string) (*indexv1.NarFile, error) {
	var nf *indexv1.NarFile
	err := c.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(narsBucket).Get([]byte(fileHash))
		if v == nil {
			return nil
		}
		var err error
		nf, err = decodeNarFile(v)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("read NAR file %s: %w", fileHash, err)
	}
	if nf == nil {
		return nil, fault.NotFound("NAR file sha256:%s is not in the cache", fileHash)
	}
	return nf, nil
}

// AddNarFile records nf under fileHash (its nix32 digest) unless a record
// is already there, and returns the record stored. NAR files are content
// addressed: an existing record describes the same bytes and is kept.
func (c *Catalog) AddNarFile(fileHash string, nf *indexv1.NarFile) (*indexv1.NarFile, error) {
	return c.AddStoredNarFile(fileHash, nf, nil)
}

// AddStoredNarFile is AddNarFile for a file just stored: in the
// transaction that records it, onDisk (when not nil) makes sure the file
// is still there. A deletion that freed the file's earlier record removes
// the file in a transaction too (RemoveFreed): the two cannot interleave,
// so a record never names a file removed under it.
func (c *Catalog) AddStoredNarFile(fileHash string, nf *indexv1.NarFile, onDisk func() error) (*indexv1.NarFile, error) {
	stored := nf
	err := c.write(func(tx *bolt.Tx) error {
		b := tx.Bucket(narsBucket)
		if v := b.Get([]byte(fileHash)); v != nil {
			old, err := decodeNarFile(v)
			if err != nil {
				return err
			}
			stored = old
			return nil
		}
		if onDisk != nil {
			// The error names where files are kept: not for the client.
			if onDisk() != nil {
				// Not Unavailable: Nix 2.8 retries a NAR upload answered 503
				// with a source it already consumed, and hangs.
				return fault.Precondition("the NAR file %s was removed while it was stored (a deletion freed it): upload it again", nf.GetFileHash())
			}
		}
		// The file was just verified: a quarantined record of it is void.
		if _, err := setNarFile(tx, quarantineNarsBucket, fileHash, nil); err != nil {
			return err
		}
		_, err := setNarFile(tx, narsBucket, fileHash, nf)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("record NAR file %s: %w", fileHash, err)
	}
	return stored, nil
}

// PathInfo returns the published path with this hash part, or an error of
// class fault.ErrNotFound.
func (c *Catalog) PathInfo(hashPart string) (*indexv1.PathInfo, error) {
	var info *indexv1.PathInfo
	err := c.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(pathsBucket).Get([]byte(hashPart))
		if v == nil {
			return nil
		}
		var err error
		info, err = decodePath(hashPart, v)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("read path %s: %w", hashPart, err)
	}
	if info == nil {
		return nil, fault.NotFound("store path %s is not in the cache", hashPart)
	}
	return info, nil
}

// UpdatePathInfo reads the path with this hash part (nil when absent),
// passes it to fn and, in the same transaction, stores what fn returns
// unless it is nil or fn fails; fn's error is returned as is. It returns
// the record stored (the old one when fn returned nil). What fn returns is
// stored only if its references are published and its NAR file recorded
// (closure.go); if not, the error is of class fault.ErrPrecondition.
func (c *Catalog) UpdatePathInfo(hashPart string, fn func(old *indexv1.PathInfo) (*indexv1.PathInfo, error)) (*indexv1.PathInfo, error) {
	return c.update(nil, hashPart, fn)
}

// update is UpdatePathInfo after publishing adopted (Adopt).
func (c *Catalog) update(adopted []*indexv1.PathInfo, hashPart string, fn func(old *indexv1.PathInfo) (*indexv1.PathInfo, error)) (*indexv1.PathInfo, error) {
	var stored *indexv1.PathInfo
	var fnErr error
	var published []string
	kind := indexv1.PathEventKind_PATH_EVENT_KIND_UNSPECIFIED
	err := c.write(func(tx *bolt.Tx) error {
		kind, published = indexv1.PathEventKind_PATH_EVENT_KIND_UNSPECIFIED, nil
		b := tx.Bucket(pathsBucket)
		for _, a := range adopted {
			key, err := localKey(a)
			if err != nil {
				return err
			}
			if b.Get(key) != nil {
				continue
			}
			if err := publishPath(tx, string(key), a); err != nil {
				return err
			}
			published = append(published, string(key))
		}
		var old *indexv1.PathInfo
		if v := b.Get([]byte(hashPart)); v != nil {
			var err error
			if old, err = decodePath(hashPart, v); err != nil {
				return err
			}
		}
		next, err := fn(old)
		if err != nil {
			fnErr = err
			return err
		}
		if next == nil {
			stored = old
			return nil
		}
		stored = next
		kind = indexv1.PathEventKind_PATH_EVENT_KIND_CHANGED
		if old == nil {
			kind = indexv1.PathEventKind_PATH_EVENT_KIND_PUBLISHED
		}
		return publishPath(tx, hashPart, next)
	})
	if fnErr != nil {
		return nil, fnErr
	}
	if err != nil {
		return nil, fmt.Errorf("update path %s: %w", hashPart, err)
	}
	c.changes.Publish(indexv1.PathEventKind_PATH_EVENT_KIND_PUBLISHED, published...)
	if kind != indexv1.PathEventKind_PATH_EVENT_KIND_UNSPECIFIED {
		c.changes.Publish(kind, hashPart)
	}
	return stored, nil
}

// publishPath stores info as the published path key, once its closure
// and file are checked (closure.go).
func publishPath(tx *bolt.Tx, key string, info *indexv1.PathInfo) error {
	if err := checkPublishable(tx, key, info); err != nil {
		return err
	}
	// Published again (pushed anew after Verify quarantined it): the path
	// is served from its new record, not left quarantined too.
	if _, err := setPath(tx, quarantineBucket, key, nil); err != nil {
		return err
	}
	_, err := setPath(tx, pathsBucket, key, info)
	return err
}

// PresentPaths returns the hash parts, in the order given and without
// repeats, that are published.
func (c *Catalog) PresentPaths(hashParts []string) ([]string, error) {
	var present []string
	err := c.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(pathsBucket)
		seen := make(map[string]bool, len(hashParts))
		for _, h := range hashParts {
			if seen[h] {
				continue
			}
			seen[h] = true
			if b.Get([]byte(h)) != nil {
				present = append(present, h)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("check paths: %w", err)
	}
	return present, nil
}
