// Package narstore keeps the NAR files, content-addressed by file hash, and
// verifies each upload while it streams in.
//
// The files live in a Backend: by default a directory on the local disk,
//
//	nars/<first 2 chars of the nix32 file hash>/<nix32 file hash>.nar<ext>
//
// or an S3-compatible bucket (Bucket), under the same names. Either way an
// upload is first written to the local tmp/ directory (emptied at Open)
// while it is verified, and handed to the backend only once it passed
// every check; the caller records it in the catalogue after that. The
// startup check (package consistency, through check.go) moves files of
// the local directory that no catalogue record names to orphans/ beside
// nars/, rather than deleting them.
package narstore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/nixcache/nixcache/nix/compression"
	"github.com/nixcache/nixcache/nix/nixhash"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
)

// Store is the NAR files of one index.
type Store struct {
	files      Backend
	tmpDir     string
	orphansDir string
	maxSize    uint64
	limits     Limits
	// leftovers counts the files Open found, and removed, in tmp/.
	leftovers int
}

// Open opens the store with its files on the local disk, in dataDir/nars;
// see OpenWith.
func Open(dataDir string, maxSize uint64) (*Store, error) {
	return OpenWith(dataDir, maxSize, nil)
}

// OpenWith prepares the tmp/ directory under dataDir, removing whatever an
// earlier run left there, and returns the store keeping its files in
// files (nil: the directory dataDir/nars). maxSize bounds both the size of
// an uploaded file and the size of the NAR it decompresses to.
func OpenWith(dataDir string, maxSize uint64, files Backend) (*Store, error) {
	if maxSize == 0 {
		return nil, fmt.Errorf("open NAR store: the size limit is 0")
	}
	s := &Store{
		files:      files,
		tmpDir:     filepath.Join(dataDir, "tmp"),
		orphansDir: filepath.Join(dataDir, "orphans"),
		maxSize:    maxSize,
	}
	if s.files == nil {
		dir, err := NewDir(filepath.Join(dataDir, "nars"))
		if err != nil {
			return nil, fmt.Errorf("open NAR store: %w", err)
		}
		s.files = dir
	}
	// What is in tmp/ is an upload a killed run never finished: no
	// catalogue record can name it.
	if names, err := readDirNames(s.tmpDir); err == nil {
		s.leftovers = len(names)
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("open NAR store: %w", err)
	}
	if err := os.RemoveAll(s.tmpDir); err != nil {
		return nil, fmt.Errorf("open NAR store: clear %s: %w", s.tmpDir, err)
	}
	if err := os.MkdirAll(s.tmpDir, 0o755); err != nil {
		return nil, fmt.Errorf("open NAR store: %w", err)
	}
	return s, nil
}

// Limits bound what verifying one upload may cost beyond -max-nar-size.
type Limits struct {
	// MaxRatio refuses an upload whose decompressed NAR is more than
	// MaxRatio times the compressed bytes read so far, once more than
	// RatioFloor bytes were decompressed (a decompression bomb); 0: no
	// bound.
	MaxRatio   uint64
	RatioFloor uint64
}

// Default limits: a bomb costs at most 64 MiB of decompression, or 1000
// times its own size; real NARs compress 3 to 10 times, a file of zeros
// in xz about 7000 times.
const (
	DefaultMaxRatio   = 1000
	DefaultRatioFloor = 64 << 20
)

// WithLimits sets the store's decompression limits (none by default).
func (s *Store) WithLimits(l Limits) *Store {
	s.limits = l
	return s
}

// LeftoverUploads is how many unfinished uploads of an earlier run Open
// removed from tmp/.
func (s *Store) LeftoverUploads() int { return s.leftovers }

// MaxSize is the size limit the store enforces on uploads.
func (s *Store) MaxSize() uint64 { return s.maxSize }

// Backend is where the files are.
func (s *Store) Backend() Backend { return s.files }

// key is the backend key of the file with this nix32 file hash and
// compression.
func key(fileHash, comp string) (string, error) {
	ext, err := compression.Extension(comp)
	if err != nil {
		return "", fmt.Errorf("file name of %s: %w", fileHash, err)
	}
	if len(fileHash) < 2 {
		return "", fmt.Errorf("file name of %q: hash too short", fileHash)
	}
	return keyOf(fileHash, ext), nil
}

// keyOfFile is the backend key of the file nf describes.
func keyOfFile(nf *indexv1.NarFile) (string, error) {
	h, err := nixhash.ParseAs(nixhash.SHA256, nf.GetFileHash())
	if err != nil {
		return "", fmt.Errorf("NAR file: %w", err)
	}
	return key(h.NixBase32(), nf.GetCompression())
}

// RelativePath is where the file nf describes lies under the nars/
// directory, slash-separated, for a reader that shares the directory (a
// co-located gateway's -nar-dir); ok is false when the files are not in a
// local directory (a bucket).
func (s *Store) RelativePath(nf *indexv1.NarFile) (rel string, ok bool, err error) {
	if _, local := s.files.(*Dir); !local {
		return "", false, nil
	}
	k, err := keyOfFile(nf)
	if err != nil {
		return "", false, err
	}
	return k, true, nil
}

// Stat returns the size of the stored file nf describes, as the backend
// has it; a missing file matches fs.ErrNotExist.
func (s *Store) Stat(ctx context.Context, nf *indexv1.NarFile) (int64, error) {
	k, err := keyOfFile(nf)
	if err != nil {
		return 0, err
	}
	return s.files.Stat(ctx, k)
}

// StoredFile is a file found in the backend by Walk.
type StoredFile struct {
	// FileHash is the nix32 file hash the file is named by.
	FileHash    string
	Compression string
	Size        int64
}

// Walk calls fn with every file in the backend, in no particular order.
// Objects whose names this package would not have made are skipped.
func (s *Store) Walk(ctx context.Context, fn func(StoredFile) error) error {
	return s.files.Walk(ctx, func(k string, size int64) error {
		fileHash, ext, ok := parseKey(k)
		if !ok {
			return nil
		}
		comp, err := compression.FromExtension(ext)
		if err != nil {
			return nil //nolint:nilerr // not a name of ours: skipped
		}
		return fn(StoredFile{FileHash: fileHash, Compression: comp, Size: size})
	})
}

// Presign returns a URL from which a client can read the file nf
// describes directly, without credentials, until expiry passes; ok is
// false when the backend cannot make one (the local disk).
func (s *Store) Presign(ctx context.Context, nf *indexv1.NarFile, expiry time.Duration) (url string, ok bool, err error) {
	p, isPresigner := s.files.(Presigner)
	if !isPresigner {
		return "", false, nil
	}
	k, err := keyOfFile(nf)
	if err != nil {
		return "", false, err
	}
	url, err = p.Presign(ctx, k, expiry)
	if err != nil {
		return "", false, fmt.Errorf("presign %s: %w", nf.GetFileHash(), err)
	}
	return url, true, nil
}

// errMissing says a file the catalogue names is not in the backend.
func (s *Store) errMissing(nf *indexv1.NarFile, err error) error {
	return fmt.Errorf("NAR file %s is in the catalogue but missing from %s: %w", nf.GetFileHash(), s.files, err)
}

// isMissing tells whether err says a key is not there.
func isMissing(err error) bool { return errors.Is(err, fs.ErrNotExist) }

// SyncDir makes a directory's entries (a rename, a new file) durable; the
// host copies of package hostnar are made durable the same way.
func SyncDir(dir string) error { return syncDir(dir) }

// syncDir makes a directory's entries (a rename, a new file) durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync directory: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}

// readDirNames lists the names in dir, unsorted.
func readDirNames(dir string) ([]string, error) {
	d, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("read directory %s: %w", dir, err)
	}
	return names, nil
}
