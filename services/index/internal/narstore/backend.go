package narstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Backend keeps the stored NAR files, each under a key
// "<first 2 chars of the nix32 file hash>/<nix32 file hash>.nar<ext>":
// a directory on the local disk (Dir) or an S3-compatible bucket (Bucket).
// Only verified files reach a Backend; it checks nothing itself.
type Backend interface {
	// Put stores size bytes of file, a verified upload read from its
	// start, under key, durably, replacing what is there. Put owns file:
	// it is closed and gone from the upload directory when Put returns,
	// whether it succeeded or not. A failed Put leaves no new object
	// under key (what was stored there before is kept).
	Put(ctx context.Context, key string, file *os.File, size int64) error
	// Open reads key from offset on; length > 0 says only that many bytes
	// will be read. A missing key is an error that matches fs.ErrNotExist.
	Open(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error)
	// Remove deletes key; a key already gone is not an error.
	Remove(ctx context.Context, key string) error
	// Stat returns the size of what is stored under key; a missing key
	// matches fs.ErrNotExist.
	Stat(ctx context.Context, key string) (int64, error)
	// Walk calls fn with every stored key and its size, in no particular
	// order, until fn returns an error (which Walk returns).
	Walk(ctx context.Context, fn func(key string, size int64) error) error
	// String says where the files are, for logs and errors.
	String() string
}

// Presigner is a Backend that can let clients read a key straight from
// it: a URL that works without credentials until it expires.
type Presigner interface {
	Presign(ctx context.Context, key string, expiry time.Duration) (string, error)
}

// storedFileMode is the mode of a file in Dir: the index's group may read
// it (a co-located gateway, -nar-dir).
const storedFileMode = 0o640

// Dir is a Backend over a local directory (<data dir>/nars); uploads are
// renamed into it from a directory of the same file system.
type Dir struct {
	root string
}

// NewDir returns the Backend over root, creating it.
func NewDir(root string) (*Dir, error) {
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, fmt.Errorf("open NAR directory: %w", err)
	}
	return &Dir{root: root}, nil
}

func (d *Dir) String() string { return d.root }

// path is the file of key; keys are made by this package, never by a caller.
func (d *Dir) path(key string) string { return filepath.Join(d.root, filepath.FromSlash(key)) }

// Put renames the synced file into place, so that a reader sees either
// the old file or the new one, never a part.
func (d *Dir) Put(ctx context.Context, key string, file *os.File, size int64) error {
	renamed := false
	defer func() {
		file.Close()
		if !renamed {
			os.Remove(file.Name())
		}
	}()
	// Readable by the index's group too (CreateTemp made it 0600): a
	// co-located gateway in that group sends stored files itself.
	if err := file.Chmod(storedFileMode); err != nil {
		return fmt.Errorf("chmod upload file: %w", err)
	}
	if err := file.Sync(); err != nil {
		return fmt.Errorf("sync upload file: %w", err)
	}
	if err := file.Close(); err != nil {
		return fmt.Errorf("close upload file: %w", err)
	}
	final := d.path(key)
	shard := filepath.Dir(final)
	if _, err := os.Stat(shard); errors.Is(err, os.ErrNotExist) {
		if err := os.Mkdir(shard, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("store NAR file: %w", err)
		}
		if err := syncDir(d.root); err != nil {
			return fmt.Errorf("store NAR file: %w", err)
		}
	}
	if err := os.Rename(file.Name(), final); err != nil {
		return fmt.Errorf("store NAR file: %w", err)
	}
	renamed = true
	if err := syncDir(shard); err != nil {
		return fmt.Errorf("store NAR file: %w", err)
	}
	return nil
}

// Open opens the file and seeks to offset.
func (d *Dir) Open(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	f, err := os.Open(d.path(key))
	if err != nil {
		return nil, err
	}
	if offset > 0 {
		if _, err := f.Seek(offset, io.SeekStart); err != nil {
			f.Close()
			return nil, err
		}
	}
	return f, nil
}

// Remove removes the file.
func (d *Dir) Remove(ctx context.Context, key string) error {
	if err := os.Remove(d.path(key)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// Stat stats the file.
func (d *Dir) Stat(ctx context.Context, key string) (int64, error) {
	fi, err := os.Stat(d.path(key))
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// Walk walks the directory tree.
func (d *Dir) Walk(ctx context.Context, fn func(key string, size int64) error) error {
	return filepath.WalkDir(d.root, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if e.IsDir() {
			return nil
		}
		fi, err := e.Info()
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(d.root, path)
		if err != nil {
			return err
		}
		return fn(filepath.ToSlash(rel), fi.Size())
	})
}

// keyOf is the key of the file with this nix32 file hash and extension.
func keyOf(fileHash, ext string) string {
	return fileHash[:2] + "/" + fileHash + ".nar" + ext
}

// parseKey splits a key into its nix32 file hash and extension; ok is
// false for anything this package would not have made.
func parseKey(key string) (fileHash, ext string, ok bool) {
	shard, name, found := strings.Cut(key, "/")
	if !found || strings.Contains(name, "/") {
		return "", "", false
	}
	fileHash, rest, found := strings.Cut(name, ".nar")
	if !found || len(fileHash) < 2 || fileHash[:2] != shard {
		return "", "", false
	}
	return fileHash, rest, true
}
