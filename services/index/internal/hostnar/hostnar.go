// Package hostnar keeps compressed copies of the NARs of the host's store
// (the paths package localstore serves), so that a host path, once
// downloaded, is served the way a pushed one is: a file on disk, compressed
// once, sent by a co-located gateway with sendfile.
//
// The copies are zstd files by default; with Config.Compression none
// they are plain NARs (the file hash is the NAR hash), for clients on a
// fast network: the gateway then sends one file with sendfile instead
// of walking the path's tree for every download. Everything below holds
// for both forms.
//
// # Who owns the copies: the index
//
// The index owns every NAR file of the cache and the catalogue that says
// what is served, so it owns these too: they lie in the index's
// <data-dir>/nars/host/ directory,
//
//	nars/host/<first 2 chars of the nix32 file hash>/<nix32 file hash>.nar.zst (or .nar)
//
// and are recorded in the catalogue beside the local path they were made
// from (catalog's host-nars buckets). So
//   - a path's narinfo (GetPathInfo) names the copy once it is recorded
//     (Compression, FileHash, FileSize, URL), and that change reaches every
//     gateway through WatchPaths (a CHANGED event), like a re-signing;
//   - a co-located gateway's -nar-dir (<data-dir>/nars) covers nars/host/:
//     StatNar names the copy ("host/<2>/<hash>.nar.zst") and the gateway
//     sends it with sendfile, with no new flag; a remote gateway gets it
//     from GetNar by file hash, streamed like any stored file;
//   - the copy goes in the same transaction as its path when the host's
//     store loses it (catalog.DeleteLocal), and its file right after;
//   - the nix-serve URL an older narinfo named (uncompressed, dumped from
//     the store) keeps working as long as the path exists.
//
// A gateway could not own them: there may be several, on other hosts,
// and only the index sees every download and every change of the store.
//
// # When a copy is made
//
// On the first download of a host path (GetNar by store hash, or a
// co-located gateway's RecordDownloads report of a NAR it dumped itself),
// the path is queued; one background worker, at the lowest CPU priority
// (nice 19 on its thread), reads the NAR again from the store directory
// (from the page cache the download just filled) and compresses it. The
// download itself is served as before, uncompressed or compressed on the
// fly (-zstd-local), and neither waits for the copy nor can spoil it: a
// client that is slow, or goes away, does not hold or cut the worker.
// With Ahead (-host-nar-ahead), every host path is queued as soon as it is
// catalogued, as long as the budget has room: ahead-of-time copies never
// evict.
//
// # Nothing unverified is served
//
// The NAR is hashed while it is compressed and must have the path's NAR
// hash and size (a path that changed on disk is not copied); the file is
// hashed while written, synced, then read back whole: its hash must be
// the one computed while writing and its decompressed content must have
// the path's NAR hash again. Only then is it renamed into place and then
// recorded. The work happens in nars/host/tmp/, emptied at every start; a
// file in place that no record names (a crash between the rename and the
// record) is removed at start, and so is a record whose file is missing
// or of another size. Copies of another compression than the one
// configured (the setting changed) are retired at start.
//
// # The byte budget
//
// The copies' total size stays within MaxBytes: before a new copy is
// recorded, the least recently used copies are dropped until it fits (a
// copy that grows past the budget alone is given up). Use is a download
// of the copy (StatNar with download, GetNar, RecordDownloads) or of the
// path. Use times are kept in memory; after a restart the order starts
// from the catalogue's key order.
//
// An evicted copy is retired (catalog.DropHostNars): its narinfo names
// the uncompressed NAR again, but a client may hold the old narinfo (Nix
// keeps them for a month), so GetNar of the retired file hash makes the
// same bytes again from the store as they stream (retired.go) and queues
// the copy again.
package hostnar

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/klauspost/compress/zstd"

	"github.com/nixcache/nixcache/nix/compression"
	"github.com/nixcache/nixcache/nix/nixhash"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/catalog"
	"github.com/nixcache/nixcache/services/index/internal/fault"
	"github.com/nixcache/nixcache/services/index/internal/narstore"
)

// DefaultCompression is the copies' compression unless configured:
// zstd, the smaller file for a client behind a slow network.
const DefaultCompression = compression.Zstd

// Compressions are the copies' compressions: zstd, or none (plain NARs,
// sent as nginx sends a file, for clients on a fast network).
var Compressions = []string{compression.Zstd, compression.None}

// DefaultLevel is the zstd level of the copies: zstd's own default, about
// as fast as xz -0 and close to xz's ratio on NARs.
const DefaultLevel = 3

// maxQueued bounds the paths queued for a copy (some 100 bytes each): the
// downloads reported are not trusted to be few.
const maxQueued = 1 << 16

// fileMode is the copies' mode: readable by the index's group, as the
// pushed files, for a co-located gateway.
const fileMode = 0o640

// Config configures a Store.
type Config struct {
	// Dir is the directory of the copies, <data-dir>/nars/host.
	Dir string
	// StoreDir is the host's store directory, where NARs are dumped from.
	StoreDir string
	// Compression is the copies' compression, one of Compressions (""
	// is DefaultCompression).
	Compression string
	// Level is the zstd level, 1 to 22 (mapped to the encoder's levels).
	Level int
	// MaxBytes is the budget of the copies' total size.
	MaxBytes uint64
	// Ahead queues every host path when it is catalogued, not only on its
	// first download.
	Ahead bool
	Log   *slog.Logger
}

// Store is the compressed copies of one index. Its methods are safe for
// concurrent use; Run runs once.
type Store struct {
	cfg   Config
	cat   *catalog.Catalog
	level zstd.EncoderLevel

	mu      sync.Mutex
	entries map[string]*entry // by hash part
	byFile  map[string]*entry // by nix32 file hash
	lru     list.List         // of *entry, most recently used first
	total   uint64            // bytes of the entries, pending ones included
	queue   []job
	queued  map[string]bool // the paths queued or being copied
	wake    chan struct{}
	// aheadLeft: paths to copy ahead of time were left out of a full
	// queue.
	aheadLeft bool

	// ws is the worker's encoder, decoder and buffer (make.go), used by
	// Run's goroutine alone.
	ws *workspace
	// retiredEncoders hold the encoders of retired copies made again
	// (retired.go).
	retiredEncoders sync.Pool
	// remaking holds a slot for each retired copy being made again: each
	// costs a whole compression, so only MaxRemakes run at once.
	remaking chan struct{}

	stats Stats
}

// entry is one copy, recorded or about to be (pending).
type entry struct {
	hashPart string
	fileHash string // nix32
	size     uint64
	key      string // file name under Dir, slash-separated
	elem     *list.Element
	pending  bool
}

// job is a host path to copy.
type job struct {
	hashPart string
	ahead    bool
}

// Stats counts what the store did since it opened.
type Stats struct {
	// Made copies, and bytes of NAR they hold; Evicted, Dropped (their
	// path gone); Skipped (changed on disk, too large, no room ahead of
	// time, another path's copy has the same bytes); Failed.
	Made, MadeNarBytes, Evicted, Dropped, Skipped, Failed uint64
}

// Usage is the copies' number and total size.
type Usage struct {
	Files, Bytes uint64
}

// StartReport is what Open found and repaired.
type StartReport struct {
	// Copies kept; records dropped for a missing or wrong-sized file;
	// copies of another compression retired (the setting changed); files
	// removed that no record named; unfinished files removed from tmp/.
	Kept, DroppedRecords, Recompressed, RemovedFiles, Leftovers int
}

// Open opens the copies in cfg.Dir: it empties tmp/, drops the records
// whose file is missing or of another size, retires the copies of
// another compression than cfg's (and removes their files), removes the
// files no record names, and evicts down to the budget.
func Open(cfg Config, cat *catalog.Catalog) (*Store, StartReport, error) {
	var rep StartReport
	if cfg.Level == 0 {
		cfg.Level = DefaultLevel
	}
	if cfg.Level < 1 || cfg.Level > 22 {
		return nil, rep, fmt.Errorf("zstd level %d: want 1 to 22", cfg.Level)
	}
	if cfg.Compression == "" {
		cfg.Compression = DefaultCompression
	}
	if !slices.Contains(Compressions, cfg.Compression) {
		return nil, rep, fmt.Errorf("host NAR copies: compression %q: want one of %s", cfg.Compression, strings.Join(Compressions, ", "))
	}
	s := &Store{cfg: cfg, cat: cat, level: zstd.EncoderLevelFromZstd(cfg.Level), remaking: make(chan struct{}, MaxRemakes),
		entries: map[string]*entry{}, byFile: map[string]*entry{}, queued: map[string]bool{},
		wake: make(chan struct{}, 1)}
	tmp := s.tmpDir()
	if names, err := os.ReadDir(tmp); err == nil {
		rep.Leftovers = len(names)
	}
	if err := os.RemoveAll(tmp); err != nil {
		return nil, rep, fmt.Errorf("open host NAR copies: clear %s: %w", tmp, err)
	}
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return nil, rep, fmt.Errorf("open host NAR copies: %w", err)
	}
	recs, err := cat.HostNars()
	if err != nil {
		return nil, rep, err
	}
	var bad, other []string
	for _, r := range recs {
		key, err := keyOf(r.File)
		if err != nil {
			bad = append(bad, r.HashPart)
			continue
		}
		if r.File.GetCompression() != cfg.Compression {
			// Made before a change of -host-nar-compression: retired, so
			// that the path gets a copy of the one now asked for, while a
			// client holding a narinfo naming it still gets it.
			other = append(other, r.HashPart)
			continue
		}
		st, err := os.Stat(filepath.Join(cfg.Dir, filepath.FromSlash(key)))
		if err != nil || !st.Mode().IsRegular() || uint64(st.Size()) != r.File.GetFileSize() {
			bad = append(bad, r.HashPart)
			continue
		}
		s.add(r.HashPart, r.File, key, false)
	}
	if len(bad) > 0 {
		dropped, err := cat.DropHostNars(bad, false)
		if err != nil {
			return nil, rep, err
		}
		rep.DroppedRecords = len(dropped)
	}
	if len(other) > 0 {
		retired, err := cat.DropHostNars(other, true)
		if err != nil {
			return nil, rep, err
		}
		rep.Recompressed = len(retired)
		s.removeFiles(retired)
	}
	err = filepath.WalkDir(cfg.Dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if p == tmp {
				return filepath.SkipDir
			}
			return nil
		}
		rel, err := filepath.Rel(cfg.Dir, p)
		if err != nil {
			return err
		}
		if e := s.byKey(filepath.ToSlash(rel)); e != nil {
			return nil
		}
		rep.RemovedFiles++
		return os.Remove(p) //nolint:gosec // G122: the index's own directory, no one else writes there
	})
	if err != nil {
		return nil, rep, fmt.Errorf("open host NAR copies: %w", err)
	}
	rep.Kept = len(s.entries)
	if victims := s.evictFor(0); len(victims) > 0 {
		s.drop(victims)
	}
	return s, rep, nil
}

// byKey returns the entry whose file is key; the caller owns s or holds
// the lock.
func (s *Store) byKey(key string) *entry {
	name := key[strings.LastIndexByte(key, '/')+1:]
	fileHash, _, _ := strings.Cut(name, ".")
	if e := s.byFile[fileHash]; e != nil && e.key == key {
		return e
	}
	return nil
}

func (s *Store) tmpDir() string { return filepath.Join(s.cfg.Dir, "tmp") }

// keyOf is the file name of the copy nf, under Dir.
func keyOf(nf *indexv1.NarFile) (string, error) {
	h, err := nixhash.ParseAs(nixhash.SHA256, nf.GetFileHash())
	if err != nil {
		return "", fmt.Errorf("host NAR copy: %w", err)
	}
	ext, err := compression.Extension(nf.GetCompression())
	if err != nil {
		return "", fmt.Errorf("host NAR copy: %w", err)
	}
	d := h.NixBase32()
	return d[:2] + "/" + d + ".nar" + ext, nil
}

// RelativePath is where the copy nf lies under the index's nars/
// directory, for a co-located gateway's -nar-dir.
func (s *Store) RelativePath(nf *indexv1.NarFile) (string, error) {
	key, err := keyOf(nf)
	if err != nil {
		return "", err
	}
	return filepath.Base(s.cfg.Dir) + "/" + key, nil
}

// add records an entry in memory as the most recently used; the caller
// owns s or holds the lock.
func (s *Store) add(hashPart string, nf *indexv1.NarFile, key string, pending bool) *entry {
	h, _ := nixhash.ParseAs(nixhash.SHA256, nf.GetFileHash())
	e := &entry{hashPart: hashPart, fileHash: h.NixBase32(), size: nf.GetFileSize(), key: key, pending: pending}
	e.elem = s.lru.PushFront(e)
	s.entries[hashPart] = e
	s.byFile[e.fileHash] = e
	s.total += e.size
	return e
}

// remove forgets an entry in memory; the caller holds the lock.
func (s *Store) remove(e *entry) {
	if s.entries[e.hashPart] != e {
		return
	}
	delete(s.entries, e.hashPart)
	if s.byFile[e.fileHash] == e {
		delete(s.byFile, e.fileHash)
	}
	s.lru.Remove(e.elem)
	s.total -= e.size
}

// evictFor takes out of memory the least recently used recorded entries
// until size more bytes fit in the budget, and returns them for drop; the
// caller holds the lock (or owns s).
func (s *Store) evictFor(size uint64) []*entry {
	var victims []*entry
	for el := s.lru.Back(); el != nil && s.total+size > s.cfg.MaxBytes; {
		e := el.Value.(*entry)
		el = el.Prev()
		if e.pending {
			continue
		}
		s.remove(e)
		victims = append(victims, e)
	}
	return victims
}

// drop forgets the evicted entries in the catalogue (their narinfos name
// the uncompressed NAR again) and removes their files.
func (s *Store) drop(victims []*entry) {
	hashes := make([]string, len(victims))
	for i, e := range victims {
		hashes[i] = e.hashPart
	}
	dropped, err := s.cat.DropHostNars(hashes, true)
	if err != nil {
		// The records stay, naming files that stay: served, and dropped
		// at the next start if the budget still says so.
		s.cfg.Log.Error("cannot drop host NAR copies; they stay on disk", "copies", len(hashes), "err", err)
		return
	}
	s.removeFiles(dropped)
	s.mu.Lock()
	s.stats.Evicted += uint64(len(dropped))
	s.mu.Unlock()
}

// removeFiles removes the files of copies whose records are gone.
func (s *Store) removeFiles(copies []catalog.HostNar) {
	for _, c := range copies {
		key, err := keyOf(c.File)
		if err != nil {
			continue
		}
		if err := os.Remove(filepath.Join(s.cfg.Dir, filepath.FromSlash(key))); err != nil && !errors.Is(err, fs.ErrNotExist) {
			s.cfg.Log.Warn("cannot remove a host NAR copy no longer recorded; the next start removes it", "file", key, "err", err)
		}
	}
}

// Forget removes the copies whose records the catalogue dropped with
// their paths (catalog.DeleteLocal): they are never served again.
func (s *Store) Forget(copies []catalog.HostNar) {
	if len(copies) == 0 {
		return
	}
	s.mu.Lock()
	for _, c := range copies {
		if e := s.entries[c.HashPart]; e != nil {
			s.remove(e)
		}
	}
	s.stats.Dropped += uint64(len(copies))
	s.mu.Unlock()
	s.removeFiles(copies)
}

// Requested notes a download of the host path with this hash part: its
// copy, if any, was used; otherwise one is queued.
func (s *Store) Requested(hashPart string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.entries[hashPart]; e != nil {
		s.lru.MoveToFront(e.elem)
		return
	}
	s.enqueue(job{hashPart: hashPart})
}

// Appeared notes host paths just catalogued: with Ahead, they are queued.
func (s *Store) Appeared(hashParts []string) {
	if !s.cfg.Ahead {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, h := range hashParts {
		if s.entries[h] == nil && s.total < s.cfg.MaxBytes && !s.enqueue(job{hashPart: h, ahead: true}) {
			// Looked for again once the queue is empty (Run).
			s.aheadLeft = true
			return
		}
	}
}

// enqueue queues j unless its path is queued already; the caller holds
// the lock. It reports false when the queue is full: the job is dropped
// (a download asks again).
func (s *Store) enqueue(j job) bool {
	if s.queued[j.hashPart] {
		return true
	}
	if len(s.queued) >= maxQueued {
		return false
	}
	s.queued[j.hashPart] = true
	s.queue = append(s.queue, j)
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return true
}

// Used notes a download of the copy with this file hash ("sha256:<nix32>"
// or nix32); a file hash of no copy is ignored.
func (s *Store) Used(fileHash string) {
	h, err := nixhash.ParseAs(nixhash.SHA256, fileHash)
	if err != nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.byFile[h.NixBase32()]; e != nil {
		s.lru.MoveToFront(e.elem)
	}
}

// Usage returns the copies' number and total size.
func (s *Store) Usage() Usage {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Usage{Files: uint64(len(s.entries)), Bytes: s.total}
}

// Stats returns the counts since Open.
func (s *Store) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// Pending is the number of paths queued or being copied.
func (s *Store) Pending() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.queued)
}

// Open opens the byte range [offset, offset+length) (length 0: to the
// end) of the copy nf, as stored. An offset at or beyond the end is an
// error of class fault.ErrOutOfRange; a copy whose file is gone,
// fault.ErrNotFound.
func (s *Store) Open(ctx context.Context, nf *indexv1.NarFile, offset, length uint64) (*narstore.Range, error) {
	total := nf.GetFileSize()
	if offset >= total && !(offset == 0 && total == 0) {
		return nil, fault.OutOfRange("offset %d is at or beyond the end of the %d-byte file", offset, total)
	}
	n := total - offset
	if length > 0 && length < n {
		n = length
	}
	key, err := keyOf(nf)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(filepath.Join(s.cfg.Dir, filepath.FromSlash(key)))
	if errors.Is(err, fs.ErrNotExist) {
		// Dropped since it was looked up.
		return nil, fault.NotFound("NAR file %s is no longer in the cache", nf.GetFileHash())
	}
	if err != nil {
		return nil, fmt.Errorf("open host NAR copy: %w", err)
	}
	if offset > 0 {
		if _, err := f.Seek(int64(offset), io.SeekStart); err != nil {
			f.Close()
			return nil, fmt.Errorf("open host NAR copy: %w", err)
		}
	}
	return narstore.NewRange(ctx, f, f, total, n, nf.GetCompression(), offset+n == total), nil
}
