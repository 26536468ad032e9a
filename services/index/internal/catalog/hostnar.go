package catalog

import (
	"fmt"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	"github.com/nixcache/nixcache/nix/nixhash"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/fault"
)

// The compressed copies of the host's paths (package hostnar): made by the
// index from a local path's NAR, kept under a byte budget, and named by
// the path's narinfo while they exist. A record is kept only beside the
// local path it was made from, with the same NAR hash: DeleteLocal and
// ClearLocal drop it with the path, in the same transaction.
//
// A copy evicted for the budget is retired, not forgotten: a client may
// hold a narinfo naming it, and while the path exists the index can make
// the same bytes again (hostnar regenerates it for such a download).
var (
	// hostNarsBucket maps a local path's hash part to the compact NarFile
	// record of its compressed copy.
	hostNarsBucket = []byte("host-nars")
	// hostNarsRetiredBucket maps a local path's hash part to the record
	// of its last evicted copy.
	hostNarsRetiredBucket = []byte("host-nars-retired")
	// hostNarFilesBucket maps the nix32 file hash of a copy, kept or
	// retired, to the hash part of the path it was made from.
	hostNarFilesBucket = []byte("host-nar-files")
)

// HostNar is a compressed copy of a local path's NAR, as recorded.
type HostNar struct {
	HashPart string
	File     *indexv1.NarFile
	// Retired: evicted, its file gone; named by no narinfo any more.
	Retired bool
}

// AddHostNar records nf as the compressed copy of the local path with
// this hash part, if that path is still recorded with nf's NAR hash and
// no other path's copy has the same file hash (two paths with the same
// NAR). It reports whether it recorded it; if so, the path's narinfo
// changes (it names the copy) and watchers hear of it.
func (c *Catalog) AddHostNar(hashPart string, nf *indexv1.NarFile) (bool, error) {
	fileKey, err := fileDigestKey(nf)
	if err != nil {
		return false, err
	}
	added := false
	err = c.db.Update(func(tx *bolt.Tx) error {
		added = false
		v := tx.Bucket(localBucket).Get([]byte(hashPart))
		if v == nil {
			return nil
		}
		info, err := decodePath(hashPart, v)
		if err != nil {
			return err
		}
		if info.GetNarHash() != nf.GetNarHash() || info.GetNarSize() != nf.GetNarSize() {
			return nil
		}
		files := tx.Bucket(hostNarFilesBucket)
		if owner := files.Get(fileKey); owner != nil && string(owner) != hashPart {
			return nil
		}
		if old, err := dropHostNar(tx, hashPart); err != nil {
			return err
		} else if old != nil {
			return fmt.Errorf("local path %s has a compressed copy already", hashPart)
		}
		if err := dropRetired(tx, hashPart); err != nil {
			return err
		}
		enc, err := encodeNarFile(nf)
		if err != nil {
			return err
		}
		if err := tx.Bucket(hostNarsBucket).Put([]byte(hashPart), enc); err != nil {
			return err
		}
		added = true
		return files.Put(fileKey, []byte(hashPart))
	})
	if err != nil {
		return false, fmt.Errorf("record compressed copy of local path %s: %w", hashPart, err)
	}
	if added {
		c.changes.Publish(indexv1.PathEventKind_PATH_EVENT_KIND_CHANGED, hashPart)
	}
	return added, nil
}

// DropHostNars forgets the compressed copies of the local paths with these
// hash parts and returns those it forgot; their paths' narinfos change
// back to the uncompressed NAR (watchers hear of it). With retire, each
// is kept as its path's retired copy (HostNarByFile still finds it). The
// caller removes the files.
func (c *Catalog) DropHostNars(hashParts []string, retire bool) ([]HostNar, error) {
	var dropped []HostNar
	err := c.db.Update(func(tx *bolt.Tx) error {
		dropped = nil
		for _, h := range hashParts {
			nf, err := dropHostNar(tx, h)
			if err != nil {
				return err
			}
			if nf == nil {
				continue
			}
			dropped = append(dropped, HostNar{HashPart: h, File: nf})
			if !retire {
				continue
			}
			if err := dropRetired(tx, h); err != nil {
				return err
			}
			fileKey, err := fileDigestKey(nf)
			if err != nil {
				return err
			}
			enc, err := encodeNarFile(nf)
			if err != nil {
				return err
			}
			if err := tx.Bucket(hostNarsRetiredBucket).Put([]byte(h), enc); err != nil {
				return err
			}
			if err := tx.Bucket(hostNarFilesBucket).Put(fileKey, []byte(h)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("drop compressed copies of local paths: %w", err)
	}
	changed := make([]string, len(dropped))
	for i, d := range dropped {
		changed[i] = d.HashPart
	}
	c.changes.Publish(indexv1.PathEventKind_PATH_EVENT_KIND_CHANGED, changed...)
	return dropped, nil
}

// HostNarByFile returns the compressed copy, kept or retired, whose hash
// has nix32 digest fileHash, or an error of class fault.ErrNotFound.
func (c *Catalog) HostNarByFile(fileHash string) (HostNar, error) {
	var hn HostNar
	err := c.db.View(func(tx *bolt.Tx) error {
		owner := tx.Bucket(hostNarFilesBucket).Get([]byte(fileHash))
		if owner == nil {
			return nil
		}
		for _, b := range []struct {
			name    []byte
			retired bool
		}{{hostNarsBucket, false}, {hostNarsRetiredBucket, true}} {
			v := tx.Bucket(b.name).Get(owner)
			if v == nil {
				continue
			}
			nf, err := decodeNarFile(v)
			if err != nil {
				return err
			}
			if h, err := nixhash.ParseAs(nixhash.SHA256, nf.GetFileHash()); err == nil && h.NixBase32() == fileHash {
				hn = HostNar{HashPart: string(owner), File: nf, Retired: b.retired}
				return nil
			}
		}
		return fmt.Errorf("file %s names local path %s, which has no such compressed copy", fileHash, owner)
	})
	if err != nil {
		return HostNar{}, fmt.Errorf("read compressed copy %s: %w", fileHash, err)
	}
	if hn.File == nil {
		return HostNar{}, fault.NotFound("NAR file sha256:%s is not in the cache", fileHash)
	}
	return hn, nil
}

// HostNars returns every compressed copy recorded, in key order.
func (c *Catalog) HostNars() ([]HostNar, error) {
	var out []HostNar
	err := c.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(hostNarsBucket).ForEach(func(k, v []byte) error {
			nf, err := decodeNarFile(v)
			if err != nil {
				return fmt.Errorf("%s: %w", k, err)
			}
			out = append(out, HostNar{HashPart: string(k), File: nf})
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list compressed copies of local paths: %w", err)
	}
	return out, nil
}

// UncopiedLocal returns the hash parts of the local paths that have no
// compressed copy, in key order.
func (c *Catalog) UncopiedLocal() ([]string, error) {
	var out []string
	err := c.db.View(func(tx *bolt.Tx) error {
		copies := tx.Bucket(hostNarsBucket)
		return tx.Bucket(localBucket).ForEach(func(k, _ []byte) error {
			if copies.Get(k) == nil {
				out = append(out, string(k))
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list local paths without a copy: %w", err)
	}
	return out, nil
}

// dropHostNar deletes the compressed copy of the local path with this
// hash part, returning it (nil when there was none).
func dropHostNar(tx *bolt.Tx, hashPart string) (*indexv1.NarFile, error) {
	return dropCopyRecord(tx, hostNarsBucket, hashPart)
}

// dropRetired deletes the retired copy of the local path with this hash
// part, if any.
func dropRetired(tx *bolt.Tx, hashPart string) error {
	_, err := dropCopyRecord(tx, hostNarsRetiredBucket, hashPart)
	return err
}

// dropCopyRecord deletes the record of bucket (kept or retired copies)
// under hashPart, and its file hash's entry, returning the record.
func dropCopyRecord(tx *bolt.Tx, bucket []byte, hashPart string) (*indexv1.NarFile, error) {
	b := tx.Bucket(bucket)
	v := b.Get([]byte(hashPart))
	if v == nil {
		return nil, nil
	}
	nf, err := decodeNarFile(v)
	if err != nil {
		return nil, fmt.Errorf("compressed copy of %s: %w", hashPart, err)
	}
	if err := b.Delete([]byte(hashPart)); err != nil {
		return nil, err
	}
	if fileKey, err := fileDigestKey(nf); err == nil {
		files := tx.Bucket(hostNarFilesBucket)
		if owner := files.Get(fileKey); owner != nil && string(owner) == hashPart {
			if err := files.Delete(fileKey); err != nil {
				return nil, err
			}
		}
	}
	return nf, nil
}

// withHostNar sets, on info (the local path with this hash part, just
// decoded), that it is a host path and, when it has a compressed copy of
// the same NAR, that copy and its URL.
func withHostNar(tx *bolt.Tx, hashPart string, info *indexv1.PathInfo) error {
	info.HostStore = true
	v := tx.Bucket(hostNarsBucket).Get([]byte(hashPart))
	if v == nil {
		return nil
	}
	nf, err := decodeNarFile(v)
	if err != nil {
		return fmt.Errorf("compressed copy of %s: %w", hashPart, err)
	}
	if nf.GetNarHash() == info.GetNarHash() {
		info.File, info.Url = nf, narURL(nf)
	}
	return nil
}

// withoutHostNar returns info as a local path record stores it: without
// what withHostNar adds.
func withoutHostNar(info *indexv1.PathInfo) *indexv1.PathInfo {
	if !info.GetHostStore() && info.GetFile() == nil && info.GetUrl() == "" {
		return info
	}
	plain := proto.Clone(info).(*indexv1.PathInfo)
	plain.HostStore, plain.File, plain.Url = false, nil, ""
	return plain
}

// fileDigestKey is the key of nf in hostNarFilesBucket: its nix32 digest.
func fileDigestKey(nf *indexv1.NarFile) ([]byte, error) {
	h, err := nixhash.ParseAs(nixhash.SHA256, nf.GetFileHash())
	if err != nil {
		return nil, fmt.Errorf("compressed copy: %w", err)
	}
	return []byte(h.NixBase32()), nil
}
