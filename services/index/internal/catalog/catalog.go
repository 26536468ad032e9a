// Package catalog is the index's record of what it holds: the NAR files
// uploaded (by file hash), the store paths published (by hash part) and,
// apart from them, the paths of the host's own store that it serves
// (local.go), in one bbolt database. Values are protobuf messages of
// nixcache.index.v1.
package catalog

import (
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/fault"
	"github.com/nixcache/nixcache/services/index/internal/pathwatch"
)

// Buckets, created at Open.
var (
	// pathsBucket maps a store path's 32-character hash part to its
	// marshalled indexv1.PathInfo.
	pathsBucket = []byte("paths")
	// narsBucket maps a NAR file's hash (the nix32 digest alone) to its
	// marshalled indexv1.NarFile.
	narsBucket = []byte("nars")
)

// Catalog is an open catalogue database. It is safe for concurrent use.
type Catalog struct {
	db *bolt.DB
	// changes hears of every committed change to what GetPathInfo
	// answers: a pushed or local path published, removed or changed.
	changes *pathwatch.Hub
}

// Open opens (creating if needed) the catalogue database at path.
func Open(path string) (*Catalog, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return nil, fmt.Errorf("open catalog %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, name := range append([][]byte{pathsBucket, narsBucket, localBucket, localUnsignedBucket}, adminBuckets...) {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return fmt.Errorf("create bucket %s: %w", name, err)
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open catalog %s: %w", path, err)
	}
	return &Catalog{db: db, changes: pathwatch.NewHub(pathwatch.DefaultBuffer)}, nil
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
	nf := new(indexv1.NarFile)
	found, err := c.get(narsBucket, fileHash, nf)
	if err != nil {
		return nil, fmt.Errorf("read NAR file %s: %w", fileHash, err)
	}
	if !found {
		return nil, fault.NotFound("NAR file sha256:%s is not in the cache", fileHash)
	}
	return nf, nil
}

// AddNarFile records nf under fileHash (its nix32 digest) unless a record
// is already there, and returns the record stored. NAR files are content
// addressed: an existing record describes the same bytes and is kept.
func (c *Catalog) AddNarFile(fileHash string, nf *indexv1.NarFile) (*indexv1.NarFile, error) {
	stored := nf
	err := c.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(narsBucket)
		if v := b.Get([]byte(fileHash)); v != nil {
			old := new(indexv1.NarFile)
			if err := proto.Unmarshal(v, old); err != nil {
				return fmt.Errorf("decode: %w", err)
			}
			stored = old
			return nil
		}
		// The file was just verified: a quarantined record of it is void.
		if err := tx.Bucket(quarantineNarsBucket).Delete([]byte(fileHash)); err != nil {
			return err
		}
		return put(b, fileHash, nf)
	})
	if err != nil {
		return nil, fmt.Errorf("record NAR file %s: %w", fileHash, err)
	}
	return stored, nil
}

// PathInfo returns the published path with this hash part, or an error of
// class fault.ErrNotFound.
func (c *Catalog) PathInfo(hashPart string) (*indexv1.PathInfo, error) {
	info := new(indexv1.PathInfo)
	found, err := c.get(pathsBucket, hashPart, info)
	if err != nil {
		return nil, fmt.Errorf("read path %s: %w", hashPart, err)
	}
	if !found {
		return nil, fault.NotFound("store path %s is not in the cache", hashPart)
	}
	return info, nil
}

// UpdatePathInfo reads the path with this hash part (nil when absent),
// passes it to fn and, in the same transaction, stores what fn returns
// unless it is nil or fn fails; fn's error is returned as is. It returns
// the record stored (the old one when fn returned nil).
func (c *Catalog) UpdatePathInfo(hashPart string, fn func(old *indexv1.PathInfo) (*indexv1.PathInfo, error)) (*indexv1.PathInfo, error) {
	var stored *indexv1.PathInfo
	var fnErr error
	kind := indexv1.PathEventKind_PATH_EVENT_KIND_UNSPECIFIED
	err := c.db.Update(func(tx *bolt.Tx) error {
		kind = indexv1.PathEventKind_PATH_EVENT_KIND_UNSPECIFIED
		b := tx.Bucket(pathsBucket)
		var old *indexv1.PathInfo
		if v := b.Get([]byte(hashPart)); v != nil {
			old = new(indexv1.PathInfo)
			if err := proto.Unmarshal(v, old); err != nil {
				return fmt.Errorf("decode: %w", err)
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
		// Published again (pushed anew after Verify quarantined it): the
		// path is served from its new record, not left quarantined too.
		if err := tx.Bucket(quarantineBucket).Delete([]byte(hashPart)); err != nil {
			return err
		}
		kind = indexv1.PathEventKind_PATH_EVENT_KIND_CHANGED
		if old == nil {
			kind = indexv1.PathEventKind_PATH_EVENT_KIND_PUBLISHED
		}
		return put(b, hashPart, next)
	})
	if fnErr != nil {
		return nil, fnErr
	}
	if err != nil {
		return nil, fmt.Errorf("update path %s: %w", hashPart, err)
	}
	if kind != indexv1.PathEventKind_PATH_EVENT_KIND_UNSPECIFIED {
		c.changes.Publish(kind, hashPart)
	}
	return stored, nil
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

// get unmarshals the value of key in bucket into m, inside the
// transaction (so the value's memory is not used after it ends).
func (c *Catalog) get(bucket []byte, key string, m proto.Message) (found bool, err error) {
	err = c.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucket).Get([]byte(key))
		if v == nil {
			return nil
		}
		found = true
		// proto.Unmarshal copies bytes fields out of v.
		if err := proto.Unmarshal(v, m); err != nil {
			return fmt.Errorf("decode: %w", err)
		}
		return nil
	})
	return found, err
}

func put(b *bolt.Bucket, key string, m proto.Message) error {
	v, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode: %w", err)
	}
	if err := b.Put([]byte(key), v); err != nil {
		return err
	}
	return nil
}
