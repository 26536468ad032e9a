// Package narstore keeps the NAR files on disk, content-addressed by file
// hash, and verifies each upload while it streams in.
//
// Layout under the data directory:
//
//	nars/<first 2 chars of the nix32 file hash>/<nix32 file hash>.nar<ext>
//	tmp/   uploads in progress; emptied at Open
//
// An upload is written to tmp/, synced, and renamed into nars/ only once
// it is verified; the caller records it in the catalogue after that.
package narstore

import (
	"fmt"
	"os"
	"path"
	"path/filepath"

	"github.com/nixcache/nixcache/nix/compression"
	"github.com/nixcache/nixcache/nix/nixhash"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
)

// storedFileMode is the mode of a stored NAR file: the index's group may
// read it (a co-located gateway, -nar-dir).
const storedFileMode = 0o640

// Store is the NAR file directory of one index.
type Store struct {
	narsDir string
	tmpDir  string
	maxSize uint64
}

// Open prepares the nars/ and tmp/ directories under dataDir and removes
// whatever an earlier run left in tmp/. maxSize bounds both the size of an
// uploaded file and the size of the NAR it decompresses to.
func Open(dataDir string, maxSize uint64) (*Store, error) {
	if maxSize == 0 {
		return nil, fmt.Errorf("open NAR store: the size limit is 0")
	}
	s := &Store{
		narsDir: filepath.Join(dataDir, "nars"),
		tmpDir:  filepath.Join(dataDir, "tmp"),
		maxSize: maxSize,
	}
	if err := os.RemoveAll(s.tmpDir); err != nil {
		return nil, fmt.Errorf("open NAR store: clear %s: %w", s.tmpDir, err)
	}
	for _, dir := range []string{s.narsDir, s.tmpDir} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("open NAR store: %w", err)
		}
	}
	return s, nil
}

// MaxSize is the size limit the store enforces on uploads.
func (s *Store) MaxSize() uint64 { return s.maxSize }

// filePath is where the file with this nix32 file hash and compression lives.
func (s *Store) filePath(fileHash, comp string) (string, error) {
	rel, err := relativePath(fileHash, comp)
	if err != nil {
		return "", err
	}
	return filepath.Join(s.narsDir, filepath.FromSlash(rel)), nil
}

// relativePath is the slash-separated name of a file under nars/:
// "<first 2 chars>/<nix32 file hash>.nar<ext>".
func relativePath(fileHash, comp string) (string, error) {
	ext, err := compression.Extension(comp)
	if err != nil {
		return "", fmt.Errorf("file name of %s: %w", fileHash, err)
	}
	if len(fileHash) < 2 {
		return "", fmt.Errorf("file name of %q: hash too short", fileHash)
	}
	return path.Join(fileHash[:2], fileHash+".nar"+ext), nil
}

// RelativePath is where the file nf describes lies under the nars/
// directory, slash-separated, for a reader that shares the directory (a
// co-located gateway's -nar-dir).
func RelativePath(nf *indexv1.NarFile) (string, error) {
	h, err := nixhash.ParseAs(nixhash.SHA256, nf.GetFileHash())
	if err != nil {
		return "", fmt.Errorf("NAR file name: %w", err)
	}
	return relativePath(h.NixBase32(), nf.GetCompression())
}

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
