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
// GetStats and /metrics, the referrers of each pushed path, and the
// pushed paths each NAR file serves.
var (
	// statsBucket maps a counter's name to its value, 8 bytes big-endian.
	statsBucket = []byte("stats")
	// fileUsersBucket holds, as keys with empty values, which pushed path
	// (published or quarantined) is served from which NAR file: the
	// file's 32-byte sha256 digest, then the path's 20-byte digest.
	fileUsersBucket = []byte("file-users")
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

// fileUserKey is the fileUsersBucket key of "path key is served from
// info's NAR file", or nil when either is not in the expected form.
func fileUserKey(key string, info *indexv1.PathInfo) []byte {
	fh := info.GetFile().GetFileHash()
	if fh == "" {
		return nil
	}
	h, err := nixhash.Parse(fh)
	d := hashDigest(key)
	if err != nil || h.Algo != nixhash.SHA256 || d == nil {
		return nil
	}
	return append(slices.Clone(h.Digest), d...)
}

// setUser records (add) or forgets that the pushed path key is served
// from info's NAR file.
func setUser(tx *bolt.Tx, key string, info *indexv1.PathInfo, add bool) error {
	k := fileUserKey(key, info)
	if k == nil {
		return nil
	}
	if add {
		return tx.Bucket(fileUsersBucket).Put(k, nil)
	}
	return tx.Bucket(fileUsersBucket).Delete(k)
}

// fileDigest is the 32-byte digest of a NAR file key (nix32), or nil.
func fileDigest(fileKey string) []byte {
	d, err := nixbase32.DecodeString(fileKey)
	if err != nil || len(d) != 32 {
		return nil
	}
	return d
}

// fileUsers calls fn with the hash part of each pushed path served from
// the NAR file with this key, until fn returns false.
func fileUsers(tx *bolt.Tx, fileKey string, fn func(hashPart string) bool) {
	prefix := fileDigest(fileKey)
	if prefix == nil {
		return
	}
	cur := tx.Bucket(fileUsersBucket).Cursor()
	for k, _ := cur.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = cur.Next() {
		if !fn(nixbase32.EncodeToString(k[len(prefix):])) {
			return
		}
	}
}

// setNarFile stores nf under key in a NAR file bucket, or deletes the
// record when nf is nil, keeping the file totals. It returns the record
// replaced.
func setNarFile(tx *bolt.Tx, bucket []byte, key string, nf *indexv1.NarFile) (*indexv1.NarFile, error) {
	b := tx.Bucket(bucket)
	var old *indexv1.NarFile
	if v := b.Get([]byte(key)); v != nil {
		var err error
		if old, err = decodeNarFile(v); err != nil {
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
		v, err := encodeNarFile(nf)
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

// FileUsers returns the hash parts of the pushed paths (published or
// quarantined) served from the NAR file with this key (nix32 digest): a
// prefix scan of the file users bucket.
func (c *Catalog) FileUsers(fileKey string) ([]string, error) {
	var users []string
	err := c.db.View(func(tx *bolt.Tx) error {
		fileUsers(tx, fileKey, func(h string) bool {
			users = append(users, h)
			return true
		})
		return nil
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
	// Not b.Get(key) != nil: the empty value of a key put earlier in the
	// same transaction reads as nil (a batch naming a path twice).
	k, _ := b.Cursor().Seek(key)
	had := bytes.Equal(k, key)
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
// their pins and downloads, and whether paths outside them use their NAR
// files (Snapshot.FileUsedElsewhere): what deleting the path needs, found through
// the referrers bucket without reading the rest of the catalogue. Paths
// is empty when the path is not pushed.
func (c *Catalog) ReferrerSnapshot(hashPart string) (*Snapshot, error) {
	s := &Snapshot{Paths: map[string]*Entry{}, FileUsedElsewhere: map[string]bool{}}
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
			todo = append(todo, referrers(tx, h)...)
		}
		// A file is freed with the paths unless another path uses it.
		for _, e := range s.Paths {
			fk := fileKey(e.Info)
			if fk == "" {
				continue
			}
			used := false
			fileUsers(tx, fk, func(u string) bool {
				used = s.Paths[u] == nil
				return !used
			})
			s.FileUsedElsewhere[e.Info.GetFile().GetFileHash()] = used
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read referrers of %s: %w", hashPart, err)
	}
	return s, nil
}
