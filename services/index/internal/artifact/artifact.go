// Package artifact stores the cache's side files: build logs, NAR
// listings, realisations of content-addressed derivations and debug-info
// links. Each is a file under <data-dir>/artifacts/<kind>/, named by its
// validated key and the compression it was stored with. Keys and contents
// are checked here (Validate*) before anything touches the disk.
package artifact

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/nixcache/nixcache/nix/compression"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/fault"
)

// Size limits of the data of one artifact, as stored.
const (
	MaxLogSize         = 256 << 20
	MaxListingSize     = 64 << 20
	MaxRealisationSize = 64 << 10
	MaxDebugInfoSize   = 64 << 10
)

// MaxSize is the most bytes an artifact of kind may hold.
func MaxSize(kind indexv1.ArtifactKind) int64 {
	switch kind {
	case indexv1.ArtifactKind_ARTIFACT_KIND_LOG:
		return MaxLogSize
	case indexv1.ArtifactKind_ARTIFACT_KIND_LISTING:
		return MaxListingSize
	case indexv1.ArtifactKind_ARTIFACT_KIND_REALISATION:
		return MaxRealisationSize
	case indexv1.ArtifactKind_ARTIFACT_KIND_DEBUG_INFO:
		return MaxDebugInfoSize
	}
	return 0
}

// dirName is the directory of a kind under the artifacts directory.
func dirName(kind indexv1.ArtifactKind) string {
	switch kind {
	case indexv1.ArtifactKind_ARTIFACT_KIND_LOG:
		return "log"
	case indexv1.ArtifactKind_ARTIFACT_KIND_LISTING:
		return "ls"
	case indexv1.ArtifactKind_ARTIFACT_KIND_REALISATION:
		return "realisations"
	case indexv1.ArtifactKind_ARTIFACT_KIND_DEBUG_INFO:
		return "debuginfo"
	}
	return ""
}

// encodings are the compressions an artifact may be stored with, in the
// order Open looks for them; "none" is stored without a suffix.
var encodings = []string{compression.None, compression.Bzip2, compression.XZ, compression.Zstd}

// NormalizeEncoding returns the stored name of a content encoding:
// "" and "identity" are "none".
func NormalizeEncoding(enc string) (string, error) {
	switch enc {
	case "", "identity":
		return compression.None, nil
	}
	for _, e := range encodings {
		if enc == e {
			return e, nil
		}
	}
	return "", fault.Invalid("content encoding %q: supported are none, bzip2, xz and zstd", enc)
}

// Store is the artifacts directory.
type Store struct {
	dir string
	// leftovers counts the files Open found, and removed, in tmp/.
	leftovers int
}

// Open returns the store under dataDir/artifacts, creating its
// directories, and removes what an earlier run left in its tmp/ (uploads
// it never finished: killed, or cut by a crash).
func Open(dataDir string) (*Store, error) {
	s := &Store{dir: filepath.Join(dataDir, "artifacts")}
	tmp := filepath.Join(s.dir, "tmp")
	if entries, err := os.ReadDir(tmp); err == nil {
		s.leftovers = len(entries)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("open artifact directory: %w", err)
	}
	if err := os.RemoveAll(tmp); err != nil {
		return nil, fmt.Errorf("open artifact directory: clear %s: %w", tmp, err)
	}
	for _, k := range []indexv1.ArtifactKind{indexv1.ArtifactKind_ARTIFACT_KIND_LOG, indexv1.ArtifactKind_ARTIFACT_KIND_LISTING,
		indexv1.ArtifactKind_ARTIFACT_KIND_REALISATION, indexv1.ArtifactKind_ARTIFACT_KIND_DEBUG_INFO} {
		if err := os.MkdirAll(filepath.Join(s.dir, dirName(k)), 0o755); err != nil {
			return nil, fmt.Errorf("create artifact directory: %w", err)
		}
	}
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return nil, fmt.Errorf("create artifact directory: %w", err)
	}
	return s, nil
}

// LeftoverUploads is how many unfinished uploads of an earlier run Open
// removed from tmp/.
func (s *Store) LeftoverUploads() int { return s.leftovers }

func (s *Store) path(kind indexv1.ArtifactKind, key, enc string) string {
	name := key
	if enc != compression.None {
		name += "," + enc
	}
	return filepath.Join(s.dir, dirName(kind), name)
}

// Put stores the data read from r as the artifact kind/key compressed
// with enc, replacing any earlier one, after checking the key, the size
// (at most MaxSize) and, for the JSON kinds, the content. It returns the
// bytes stored.
func (s *Store) Put(kind indexv1.ArtifactKind, key, enc string, r io.Reader) (int64, error) {
	if err := ValidateKey(kind, key); err != nil {
		return 0, err
	}
	enc, err := NormalizeEncoding(enc)
	if err != nil {
		return 0, err
	}
	if enc != compression.None && kind != indexv1.ArtifactKind_ARTIFACT_KIND_LOG {
		return 0, fault.Invalid("only build logs may be compressed, not %s", dirName(kind))
	}
	limit := MaxSize(kind)
	tmp, err := os.CreateTemp(filepath.Join(s.dir, "tmp"), "put-*")
	if err != nil {
		return 0, fmt.Errorf("store artifact: %w", err)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	n, err := io.Copy(tmp, io.LimitReader(r, limit+1))
	if err != nil {
		return 0, fmt.Errorf("store artifact: %w", err)
	}
	if n > limit {
		return 0, fault.Invalid("%s %s is larger than %d bytes", dirName(kind), key, limit)
	}
	if enc != compression.None {
		// A compressed log is served decoded to clients that do not take
		// its encoding: it must decode, and not beyond the limit.
		if err := checkDecodes(io.NewSectionReader(tmp, 0, n), enc, limit); err != nil {
			return 0, fault.Invalid("%s %s: %v", dirName(kind), key, err)
		}
	}
	if kind != indexv1.ArtifactKind_ARTIFACT_KIND_LOG {
		data := make([]byte, n)
		if _, err := tmp.ReadAt(data, 0); err != nil && !errors.Is(err, io.EOF) {
			return 0, fmt.Errorf("store artifact: %w", err)
		}
		if err := ValidateContent(kind, key, data); err != nil {
			return 0, err
		}
	}
	if err := tmp.Sync(); err != nil {
		return 0, fmt.Errorf("store artifact: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return 0, fmt.Errorf("store artifact: %w", err)
	}
	if err := os.Rename(tmp.Name(), s.path(kind, key, enc)); err != nil {
		return 0, fmt.Errorf("store artifact: %w", err)
	}
	// The new upload replaces those of other encodings.
	for _, other := range encodings {
		if other != enc {
			_ = os.Remove(s.path(kind, key, other))
		}
	}
	return n, nil
}

// checkDecodes reads r through its decoder to the end: it fails when r is
// not a valid enc stream or decodes to more than limit bytes.
func checkDecodes(r io.Reader, enc string, limit int64) error {
	dec, err := compression.NewReader(enc, r)
	if err != nil {
		return fmt.Errorf("not valid %s: %w", enc, err)
	}
	defer dec.Close()
	n, err := io.Copy(io.Discard, io.LimitReader(dec, limit+1))
	switch {
	case err != nil:
		return fmt.Errorf("not valid %s: %w", enc, err)
	case n > limit:
		return fmt.Errorf("decodes to more than %d bytes", limit)
	}
	return nil
}

// File is an open artifact.
type File struct {
	*os.File
	Size     int64
	Encoding string
}

// Open opens the artifact kind/key, or returns an error of class
// fault.ErrNotFound.
func (s *Store) Open(kind indexv1.ArtifactKind, key string) (*File, error) {
	if err := ValidateKey(kind, key); err != nil {
		return nil, err
	}
	for _, enc := range encodings {
		f, err := OpenFile(s.path(kind, key, enc), enc)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		return f, err
	}
	return nil, fault.NotFound("no %s %s in the cache", dirName(kind), key)
}

// OpenFile opens a regular file as an artifact stored with enc.
func OpenFile(path, enc string) (*File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open artifact: %w", err)
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("open artifact %s: not a regular file: %w", path, fs.ErrNotExist)
	}
	return &File{File: f, Size: st.Size(), Encoding: enc}, nil
}

// LocalLogPath returns where Nix keeps the log of drv (a validated
// derivation base name) under logDir: <logDir>/<2 chars>/<rest>.
func LocalLogPath(logDir, drv string) string {
	return filepath.Join(logDir, drv[:2], drv[2:])
}

// OpenLocalLog opens the host's log of drv under logDir, plain or
// bzip2-compressed as Nix writes it.
func OpenLocalLog(logDir, drv string) (*File, error) {
	if err := ValidateKey(indexv1.ArtifactKind_ARTIFACT_KIND_LOG, drv); err != nil {
		return nil, err
	}
	p := LocalLogPath(logDir, drv)
	f, err := OpenFile(p+".bz2", compression.Bzip2)
	if errors.Is(err, fs.ErrNotExist) {
		f, err = OpenFile(p, compression.None)
	}
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fault.NotFound("no build log of %s", drv)
	}
	if err != nil {
		return nil, fmt.Errorf("open host build log: %w", err)
	}
	return f, nil
}

// hasSuffix is strings.HasSuffix, for validate.go's readability.
var hasSuffix = strings.HasSuffix
