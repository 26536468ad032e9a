package catalog

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"

	bolt "go.etcd.io/bbolt"

	"github.com/nixcache/nixcache/nix/nixbase32"
	"github.com/nixcache/nixcache/nix/nixhash"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
)

// What the catalogue derives from its records, kept up to date in the
// transaction of every write (setPath, setNarFile, setPin, setUnsigned)
// so that nothing needs a scan of every path: the running totals behind
// GetStats and /metrics, the referrers of each pushed path, and which
// pushed paths each NAR file serves (in its record).
var (
	// statsBucket maps a counter's name to its value, 8 bytes big-endian.
	statsBucket = []byte("stats")
	// referrersBucket holds, as keys with empty values, the reference
	// edges of the pushed paths (published or quarantined): the 20-byte
	// digest of the hash part referred to, then the referrer's; a path's
	// reference to itself is left out.
	referrersBucket = []byte("referrers")
)

// Counter names.
const (
	cPushed           = "pushed"            // paths bucket: keys
	cPushedBytes      = "pushed-nar-bytes"  // and their NarSize
	cQuarantined      = "quarantined"       // quarantine bucket
	cQuarantinedBytes = "quarantined-bytes" //
	cLocal            = "local"             // local bucket
	cLocalBytes       = "local-nar-bytes"   //
	cLocalUnsigned    = "local-unsigned"    // local-unsigned bucket
	cShadowed         = "local-pushed"      // local paths also pushed
	cShadowedBytes    = "local-pushed-bytes"
	cPins             = "pins"
	cFiles            = "files"      // nars and quarantine-nars buckets
	cFileBytes        = "file-bytes" // and their FileSize
)

var counterNames = []string{cPushed, cPushedBytes, cQuarantined, cQuarantinedBytes, cLocal, cLocalBytes,
	cLocalUnsigned, cShadowed, cShadowedBytes, cPins, cFiles, cFileBytes}

func counter(tx *bolt.Tx, name string) uint64 {
	v := tx.Bucket(statsBucket).Get([]byte(name))
	if len(v) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

// bump adds delta to a counter; a counter never goes below zero.
func bump(tx *bolt.Tx, name string, delta int64) error {
	if delta == 0 {
		return nil
	}
	n := int64(counter(tx, name)) + delta
	v := make([]byte, 8)
	binary.BigEndian.PutUint64(v, uint64(max(n, 0)))
	return tx.Bucket(statsBucket).Put([]byte(name), v)
}

func isPushed(tx *bolt.Tx, key []byte) bool {
	return tx.Bucket(pathsBucket).Get(key) != nil || tx.Bucket(quarantineBucket).Get(key) != nil
}

// setPath stores next under key in one of the path buckets (paths,
// quarantine, local), or deletes the record when next is nil, and updates
// what is derived from it. It returns the record replaced (nil if none).
func setPath(tx *bolt.Tx, bucket []byte, key string, next *indexv1.PathInfo) (*indexv1.PathInfo, error) {
	b := tx.Bucket(bucket)
	k := []byte(key)
	var old *indexv1.PathInfo
	if v := b.Get(k); v != nil {
		var err error
		if old, err = decodePath(key, v); err != nil {
			return nil, err
		}
	}
	if old == nil && next == nil {
		return nil, nil
	}
	wasPushed := isPushed(tx, k)
	if next == nil {
		if err := b.Delete(k); err != nil {
			return nil, err
		}
	} else {
		v, err := encodePath(key, next)
		if err != nil {
			return nil, err
		}
		if err := b.Put(k, v); err != nil {
			return nil, err
		}
	}
	count, bytesName := "", ""
	switch {
	case bytes.Equal(bucket, pathsBucket):
		count, bytesName = cPushed, cPushedBytes
	case bytes.Equal(bucket, quarantineBucket):
		count, bytesName = cQuarantined, cQuarantinedBytes
	case bytes.Equal(bucket, localBucket):
		count, bytesName = cLocal, cLocalBytes
	default:
		return nil, fmt.Errorf("setPath: %s is not a path bucket", bucket)
	}
	var dn, dbytes int64
	if old != nil {
		dn--
		dbytes -= int64(old.GetNarSize())
	}
	if next != nil {
		dn++
		dbytes += int64(next.GetNarSize())
	}
	if err := bumpAll(tx, count, dn, bytesName, dbytes); err != nil {
		return nil, err
	}

	if bytes.Equal(bucket, localBucket) {
		// A local path also pushed is counted apart (GetStats counts it once).
		if !wasPushed {
			return old, nil
		}
		return old, bumpAll(tx, cShadowed, dn, cShadowedBytes, dbytes)
	}
	if nowPushed := isPushed(tx, k); nowPushed != wasPushed {
		if lv := tx.Bucket(localBucket).Get(k); lv != nil {
			local, err := decodePath(key, lv)
			if err != nil {
				return nil, err
			}
			sign := int64(1)
			if !nowPushed {
				sign = -1
			}
			if err := bumpAll(tx, cShadowed, sign, cShadowedBytes, sign*int64(local.GetNarSize())); err != nil {
				return nil, err
			}
		}
	}
	if err := setEdges(tx, key, old, -1); err != nil {
		return nil, err
	}
	if err := setEdges(tx, key, next, +1); err != nil {
		return nil, err
	}
	if err := setUser(tx, key, old, false); err != nil {
		return nil, err
	}
	return old, setUser(tx, key, next, true)
}

func bumpAll(tx *bolt.Tx, count string, dn int64, bytesName string, dbytes int64) error {
	if err := bump(tx, count, dn); err != nil {
		return err
	}
	return bump(tx, bytesName, dbytes)
}

// edgeKey is the referrers key of "referrer refers to ref", or nil when
// either is not a valid hash part.
func edgeKey(ref, referrer string) []byte {
	a, b := hashDigest(ref), hashDigest(referrer)
	if a == nil || b == nil {
		return nil
	}
	return append(a, b...)
}

// setEdges adds (sign +1) or removes (-1) the reference edges of info.
func setEdges(tx *bolt.Tx, key string, info *indexv1.PathInfo, sign int) error {
	if info == nil {
		return nil
	}
	b := tx.Bucket(referrersBucket)
	for _, ref := range info.GetReferences() {
		if len(ref) < 32 || ref[:32] == key {
			continue
		}
		ek := edgeKey(ref[:32], key)
		if ek == nil {
			continue
		}
		var err error
		if sign > 0 {
			err = b.Put(ek, nil)
		} else {
			err = b.Delete(ek)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// fileKey is the NAR file buckets' key of info's file, or "".
func fileKey(info *indexv1.PathInfo) string {
	fh := info.GetFile().GetFileHash()
	if fh == "" {
		return ""
	}
	h, err := nixhash.Parse(fh)
	if err != nil {
		return ""
	}
	return h.NixBase32()
}

// setUser adds the path key to the users of info's NAR file record, or
// removes it, wherever the record is (nars or quarantine-nars); a path
// whose file has no record changes nothing.
func setUser(tx *bolt.Tx, key string, info *indexv1.PathInfo, add bool) error {
	fk := fileKey(info)
	if info == nil || fk == "" {
		return nil
	}
	for _, name := range [][]byte{narsBucket, quarantineNarsBucket} {
		v := tx.Bucket(name).Get([]byte(fk))
		if v == nil {
			continue
		}
		nf, users, err := decodeNarFile(v)
		if err != nil {
			return fmt.Errorf("NAR file %s: %w", fk, err)
		}
		i := slices.Index(users, key)
		switch {
		case add && i < 0:
			users = append(users, key)
			slices.Sort(users)
		case !add && i >= 0:
			users = slices.Delete(users, i, i+1)
		default:
			return nil
		}
		_, err = setNarFile(tx, name, fk, nf, users)
		return err
	}
	return nil
}

// setNarFile stores nf with its users under key in a NAR file bucket, or
// deletes the record when nf is nil, keeping the file totals. It returns
// the record replaced.
func setNarFile(tx *bolt.Tx, bucket []byte, key string, nf *indexv1.NarFile, users []string) (*indexv1.NarFile, error) {
	b := tx.Bucket(bucket)
	var old *indexv1.NarFile
	if v := b.Get([]byte(key)); v != nil {
		var err error
		if old, _, err = decodeNarFile(v); err != nil {
			return nil, fmt.Errorf("NAR file %s: %w", key, err)
		}
	}
	var dn, dbytes int64
	if old != nil {
		dn--
		dbytes -= int64(old.GetFileSize())
	}
	if nf == nil {
		if old == nil {
			return nil, nil
		}
		if err := b.Delete([]byte(key)); err != nil {
			return nil, err
		}
	} else {
		v, err := encodeNarFile(nf, users)
		if err != nil {
			return nil, err
		}
		if err := b.Put([]byte(key), v); err != nil {
			return nil, err
		}
		dn++
		dbytes += int64(nf.GetFileSize())
	}
	return old, bumpAll(tx, cFiles, dn, cFileBytes, dbytes)
}

// narFileUsers reads a NAR file record and its users from either NAR file
// bucket; nil when there is none.
func narFileUsers(tx *bolt.Tx, key string) (*indexv1.NarFile, []string, error) {
	for _, name := range [][]byte{narsBucket, quarantineNarsBucket} {
		if v := tx.Bucket(name).Get([]byte(key)); v != nil {
			return decodeNarFile(v)
		}
	}
	return nil, nil, nil
}

// FileUsers returns the hash parts of the pushed paths (published or
// quarantined) served from the NAR file with this key (nix32 digest), as
// its record keeps them: no scan.
func (c *Catalog) FileUsers(fileKey string) ([]string, error) {
	var users []string
	err := c.db.View(func(tx *bolt.Tx) error {
		var err error
		_, users, err = narFileUsers(tx, fileKey)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("users of NAR file %s: %w", fileKey, err)
	}
	return users, nil
}

// setPin stores or (pin nil) deletes a pin, counting pins.
func setPin(tx *bolt.Tx, key string, pin []byte) error {
	b := tx.Bucket(pinsBucket)
	had := b.Get([]byte(key)) != nil
	var err error
	if pin == nil {
		err = b.Delete([]byte(key))
	} else {
		err = b.Put([]byte(key), pin)
	}
	if err != nil {
		return err
	}
	switch {
	case had && pin == nil:
		return bump(tx, cPins, -1)
	case !had && pin != nil:
		return bump(tx, cPins, 1)
	}
	return nil
}

// setUnsigned marks a local path unsigned or not, counting them.
func setUnsigned(tx *bolt.Tx, key []byte, unsigned bool) error {
	b := tx.Bucket(localUnsignedBucket)
	had := b.Get(key) != nil
	switch {
	case had && !unsigned:
		if err := b.Delete(key); err != nil {
			return err
		}
		return bump(tx, cLocalUnsigned, -1)
	case !had && unsigned:
		if err := b.Put(key, nil); err != nil {
			return err
		}
		return bump(tx, cLocalUnsigned, 1)
	}
	return nil
}

// Referrers returns the hash parts of the pushed paths (published or
// quarantined) that refer to the path with this hash part, sorted: a
// prefix scan of the referrers bucket.
func (c *Catalog) Referrers(hashPart string) ([]string, error) {
	var out []string
	err := c.db.View(func(tx *bolt.Tx) error {
		out = referrers(tx, hashPart)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("referrers of %s: %w", hashPart, err)
	}
	return out, nil
}

func referrers(tx *bolt.Tx, hashPart string) []string {
	prefix := hashDigest(hashPart)
	if prefix == nil {
		return nil
	}
	var out []string
	cur := tx.Bucket(referrersBucket).Cursor()
	for k, _ := cur.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = cur.Next() {
		h := nixbase32.EncodeToString(k[len(prefix):])
		if isPushed(tx, []byte(h)) {
			out = append(out, h)
		}
	}
	// nix32 order is not byte order.
	slices.Sort(out)
	return out
}

// ReferrerSnapshot reads, in one transaction, the pushed path with this
// hash part and every pushed path that refers to it directly or not, with
// their pins and downloads, and how many paths use each of their NAR
// files (Snapshot.FileUsers): what deleting the path needs, found through
// the referrers bucket without reading the rest of the catalogue. Paths
// is empty when the path is not pushed.
func (c *Catalog) ReferrerSnapshot(hashPart string) (*Snapshot, error) {
	s := &Snapshot{Paths: map[string]*Entry{}, FileUsers: map[string]uint64{}}
	err := c.db.View(func(tx *bolt.Tx) error {
		pins, access := tx.Bucket(pinsBucket), tx.Bucket(accessBucket)
		todo := []string{hashPart}
		for len(todo) > 0 {
			h := todo[len(todo)-1]
			todo = todo[:len(todo)-1]
			if s.Paths[h] != nil {
				continue
			}
			var e *Entry
			for _, src := range []struct {
				bucket      []byte
				quarantined bool
			}{{pathsBucket, false}, {quarantineBucket, true}} {
				if v := tx.Bucket(src.bucket).Get([]byte(h)); v != nil {
					var err error
					if e, err = entry([]byte(h), v, pins, access); err != nil {
						return err
					}
					e.Quarantined = src.quarantined
					break
				}
			}
			if e == nil {
				continue
			}
			s.Paths[h] = e
			if fk := fileKey(e.Info); fk != "" {
				if _, users, err := narFileUsers(tx, fk); err != nil {
					return err
				} else {
					s.FileUsers[e.Info.GetFile().GetFileHash()] = uint64(len(users))
				}
			}
			todo = append(todo, referrers(tx, h)...)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read referrers of %s: %w", hashPart, err)
	}
	return s, nil
}
