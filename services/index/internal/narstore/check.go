package narstore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
)

// What the startup consistency check (package consistency) needs of the
// stored files, besides Walk: a cheap look at each recorded file, and a
// way to put aside those nothing records.

// CheckFile looks at the stored file nf describes without reading it: it
// returns a problem ("" when none) when the file is missing or has another
// size than recorded. Comparing the content with the hashes is Verify's
// job. The error is for what stops the look itself (a permission, an I/O
// error, the bucket not answering).
func (s *Store) CheckFile(ctx context.Context, nf *indexv1.NarFile) (problem string, err error) {
	k, err := keyOfFile(nf)
	if err != nil {
		return fmt.Sprintf("the record names no valid file: %v", err), nil
	}
	size, err := s.files.Stat(ctx, k)
	switch {
	case isMissing(err):
		return "the NAR file is missing", nil
	case err != nil:
		return "", fmt.Errorf("check NAR file %s: %w", nf.GetFileHash(), err)
	case uint64(size) != nf.GetFileSize():
		return fmt.Sprintf("the NAR file is %d bytes, not %d", size, nf.GetFileSize()), nil
	}
	return "", nil
}

// ErrCannotMoveAside is MoveAside's answer for a backend other than the
// local directory: the file stays where it is.
var ErrCannotMoveAside = errors.New("only files on the local disk are moved aside")

// MoveAside moves the stored file f (found by Walk) into orphans/ beside
// nars/, under a name not taken there yet, and returns that path. Nothing
// is deleted: an operator may look at it, put it back or remove it. With
// a bucket it returns ErrCannotMoveAside and leaves the object alone.
func (s *Store) MoveAside(f StoredFile) (string, error) {
	dir, ok := s.files.(*Dir)
	if !ok {
		return "", ErrCannotMoveAside
	}
	k, err := key(f.FileHash, f.Compression)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(s.orphansDir, 0o755); err != nil {
		return "", fmt.Errorf("move aside %s: %w", k, err)
	}
	base := filepath.Base(k)
	dst := filepath.Join(s.orphansDir, base)
	for i := 1; ; i++ {
		if _, err := os.Lstat(dst); errors.Is(err, os.ErrNotExist) {
			break
		} else if err != nil {
			return "", fmt.Errorf("move aside %s: %w", k, err)
		}
		dst = filepath.Join(s.orphansDir, base+"."+strconv.Itoa(i))
	}
	src := dir.path(k)
	if err := os.Rename(src, dst); err != nil {
		return "", fmt.Errorf("move aside %s: %w", k, err)
	}
	for _, d := range []string{s.orphansDir, filepath.Dir(src)} {
		if err := syncDir(d); err != nil {
			return "", fmt.Errorf("move aside %s: %w", k, err)
		}
	}
	return dst, nil
}
