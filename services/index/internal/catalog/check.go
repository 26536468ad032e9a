package catalog

import (
	"fmt"

	bolt "go.etcd.io/bbolt"

	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
)

// What the startup consistency check (package consistency) reads of the
// catalogue, and the one repair it makes here besides Quarantine.

// ForEachPublished calls fn with the hash part and record of every
// published (served, not quarantined) pushed path, and the record of its
// NAR file (nil when there is none), in one read transaction; fn must not
// use the catalogue.
func (c *Catalog) ForEachPublished(fn func(hashPart string, info *indexv1.PathInfo, file *indexv1.NarFile) error) error {
	err := c.db.View(func(tx *bolt.Tx) error {
		nars := tx.Bucket(narsBucket)
		return tx.Bucket(pathsBucket).ForEach(func(k, v []byte) error {
			info, err := decodePath(string(k), v)
			if err != nil {
				return fmt.Errorf("decode %s: %w", k, err)
			}
			var file *indexv1.NarFile
			if fk := fileKey(info); fk != "" {
				if fv := nars.Get([]byte(fk)); fv != nil {
					if file, err = decodeNarFile(fv); err != nil {
						return fmt.Errorf("decode NAR file %s: %w", fk, err)
					}
				}
			}
			return fn(string(k), info, file)
		})
	})
	if err != nil {
		return fmt.Errorf("read published paths: %w", err)
	}
	return nil
}

// ForEachNarFile calls fn with the nix32 file hash and record of every
// NAR file recorded as uploaded (quarantined ones aside), in one read
// transaction; fn must not use the catalogue.
func (c *Catalog) ForEachNarFile(fn func(fileHash string, nf *indexv1.NarFile) error) error {
	err := c.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(narsBucket).ForEach(func(k, v []byte) error {
			nf, err := decodeNarFile(v)
			if err != nil {
				return fmt.Errorf("decode NAR file %s: %w", k, err)
			}
			return fn(string(k), nf)
		})
	})
	if err != nil {
		return fmt.Errorf("read NAR files: %w", err)
	}
	return nil
}

// DropNarFile deletes the record of an uploaded NAR file, so that the
// cache no longer claims to hold it (an uploader then sends it again). The
// caller makes sure no published path uses it. It reports whether there
// was a record.
func (c *Catalog) DropNarFile(fileHash string) (bool, error) {
	found := false
	err := c.write(func(tx *bolt.Tx) error {
		old, err := setNarFile(tx, narsBucket, fileHash, nil)
		found = old != nil
		return err
	})
	if err != nil {
		return false, fmt.Errorf("drop NAR file %s: %w", fileHash, err)
	}
	return found, nil
}

// RecordedFiles returns, of the nix32 file hashes given, those that a NAR
// file record (served or quarantined) names, with the compression it
// records.
func (c *Catalog) RecordedFiles(fileHashes []string) (map[string]string, error) {
	found := map[string]string{}
	err := c.db.View(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{narsBucket, quarantineNarsBucket} {
			b := tx.Bucket(name)
			for _, h := range fileHashes {
				if _, ok := found[h]; ok {
					continue
				}
				v := b.Get([]byte(h))
				if v == nil {
					continue
				}
				nf, err := decodeNarFile(v)
				if err != nil {
					return fmt.Errorf("decode NAR file %s: %w", h, err)
				}
				found[h] = nf.GetCompression()
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("look up NAR files: %w", err)
	}
	return found, nil
}

// PathFiles returns, of the nix32 file hashes in wanted, those that a
// pushed path (published or quarantined) names as its file, with the
// compression it records. It reads every pushed path: call it only for
// the few files no NAR file record names.
func (c *Catalog) PathFiles(wanted map[string]bool) (map[string]string, error) {
	found := map[string]string{}
	err := c.db.View(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{pathsBucket, quarantineBucket} {
			err := tx.Bucket(name).ForEach(func(k, v []byte) error {
				info, err := decodePath(string(k), v)
				if err != nil {
					return fmt.Errorf("decode %s: %w", k, err)
				}
				if h := fileKey(info); h != "" && wanted[h] {
					found[h] = info.GetFile().GetCompression()
				}
				return nil
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read pushed paths: %w", err)
	}
	return found, nil
}
