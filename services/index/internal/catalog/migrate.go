package catalog

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
)

// metaBucket holds schemaKey: the version of the catalogue's layout.
var (
	metaBucket = []byte("meta")
	schemaKey  = []byte("schema")
)

// schemaVersion is the layout this code writes. 1 (no meta bucket):
// records are marshalled messages, nothing derived is stored. 2: compact
// records (record.go), the derived buckets and counters (derived.go).
const schemaVersion = 2

// migrateBatch is how many records one transaction of the migration
// writes: its dirty pages are held in memory until it commits.
const migrateBatch = 20000

func schemaOf(db *bolt.DB) (int, error) {
	v := 0
	err := db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket(metaBucket); b != nil {
			if s := b.Get(schemaKey); len(s) == 1 {
				v = int(s[0])
			}
		}
		return nil
	})
	return v, err
}

// refuseNewer fails when db is of a schema this code does not know.
func refuseNewer(db *bolt.DB) error {
	v, err := schemaOf(db)
	if err != nil {
		return err
	}
	if v > schemaVersion {
		return newerSchema(v)
	}
	return nil
}

func newerSchema(v int) error {
	return fmt.Errorf("catalog schema %d is newer than this index's (%d): it was written by a later nixcache; "+
		"run that version again, or restore a backup made by this one (the file is left unchanged)", v, schemaVersion)
}

// isEmpty reports whether db holds no record in any bucket (a new file).
func isEmpty(db *bolt.DB) (bool, error) {
	empty := true
	err := db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(_ []byte, b *bolt.Bucket) error {
			if k, _ := b.Cursor().First(); k != nil {
				empty = false
			}
			return nil
		})
	})
	return empty, err
}

// migrate writes the catalogue of src (any schema, records of both
// encodings) into a new file at dst in the current schema: compact
// records, written in key order into full pages, and the derived buckets
// rebuilt from them. src is only read. The caller renames dst over src.
func migrate(src *bolt.DB, dst string) (err error) {
	_ = os.Remove(dst)
	db, err := bolt.Open(dst, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return err
	}
	defer func() {
		if cerr := db.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(dst)
		}
	}()
	// Unsafe on its own: the file is synced once at the end, before it
	// replaces the catalogue; a crash before leaves the old one in place.
	db.NoSync = true
	if err := db.Update(createBuckets); err != nil {
		return err
	}
	// The pushed paths before the local ones (which count as shadowed by
	// them).
	order := [][]byte{narsBucket, quarantineNarsBucket, pathsBucket, quarantineBucket, localBucket, localUnsignedBucket, pinsBucket}
	skip := [][]byte{metaBucket, statsBucket, referrersBucket, fileUsersBucket}
	err = src.View(func(stx *bolt.Tx) error {
		var others [][]byte
		err := stx.ForEach(func(name []byte, _ *bolt.Bucket) error {
			for _, n := range append(order, skip...) {
				if bytes.Equal(n, name) {
					return nil
				}
			}
			others = append(others, bytes.Clone(name))
			return nil
		})
		if err != nil {
			return err
		}
		for _, name := range append(order, others...) {
			sb := stx.Bucket(name)
			if sb == nil {
				continue
			}
			if err := copyBucket(db, name, sb); err != nil {
				return fmt.Errorf("bucket %s: %w", name, err)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	err = db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(metaBucket).Put(schemaKey, []byte{schemaVersion})
	})
	if err != nil {
		return err
	}
	return db.Sync()
}

// copyBucket copies the records of sb into the bucket of the same name of
// db, through the setters that keep the derived data.
func copyBucket(db *bolt.DB, name []byte, sb *bolt.Bucket) error {
	cur := sb.Cursor()
	k, v := cur.First()
	for k != nil {
		err := db.Update(func(tx *bolt.Tx) error {
			b, err := tx.CreateBucketIfNotExists(name)
			if err != nil {
				return err
			}
			// Keys come in order: fill every page.
			b.FillPercent = 1.0
			for n := 0; k != nil && n < migrateBatch; n++ {
				if err := copyRecord(tx, name, b, k, v); err != nil {
					return fmt.Errorf("%s: %w", k, err)
				}
				k, v = cur.Next()
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

func copyRecord(tx *bolt.Tx, name []byte, b *bolt.Bucket, k, v []byte) error {
	key := string(k)
	switch {
	case bytes.Equal(name, pathsBucket), bytes.Equal(name, quarantineBucket), bytes.Equal(name, localBucket):
		info, err := decodePath(key, v)
		if err != nil {
			return err
		}
		_, err = setPath(tx, name, key, info)
		return err
	case bytes.Equal(name, narsBucket), bytes.Equal(name, quarantineNarsBucket):
		nf, err := decodeNarFile(v)
		if err != nil {
			return err
		}
		_, err = setNarFile(tx, name, key, nf)
		return err
	case bytes.Equal(name, localUnsignedBucket):
		return setUnsigned(tx, k, true)
	case bytes.Equal(name, pinsBucket):
		return setPin(tx, key, bytes.Clone(v))
	}
	return b.Put(bytes.Clone(k), bytes.Clone(v))
}

// upgrade migrates the catalogue file at path, if it is of an older
// schema, and returns it open.
func upgrade(path string, db *bolt.DB) (*bolt.DB, error) {
	v, err := schemaOf(db)
	if err != nil {
		return nil, err
	}
	if v == schemaVersion {
		return db, nil
	}
	if v > schemaVersion {
		return nil, newerSchema(v)
	}
	empty, err := isEmpty(db)
	if err != nil {
		return nil, err
	}
	if empty {
		err = db.Update(func(tx *bolt.Tx) error {
			return tx.Bucket(metaBucket).Put(schemaKey, []byte{schemaVersion})
		})
		return db, err
	}
	tmp := path + ".migrate"
	if err := migrate(db, tmp); err != nil {
		return nil, fmt.Errorf("migrate to schema %d: %w", schemaVersion, err)
	}
	if err := db.Close(); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, path); err != nil {
		return nil, fmt.Errorf("migrate to schema %d: %w", schemaVersion, err)
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		return nil, fmt.Errorf("migrate to schema %d: %w", schemaVersion, err)
	}
	return bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, os.ErrInvalid) {
		return err
	}
	return nil
}

// createBuckets creates every bucket of the current schema.
func createBuckets(tx *bolt.Tx) error {
	names := append([][]byte{pathsBucket, narsBucket, localBucket, localUnsignedBucket, hostNarsBucket, hostNarsRetiredBucket, hostNarFilesBucket,
		metaBucket, statsBucket, referrersBucket, fileUsersBucket, tokensBucket, tokenUseBucket}, adminBuckets...)
	for _, name := range names {
		if _, err := tx.CreateBucketIfNotExists(name); err != nil {
			return fmt.Errorf("create bucket %s: %w", name, err)
		}
	}
	return nil
}
