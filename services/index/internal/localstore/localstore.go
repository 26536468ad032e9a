// Package localstore serves the host's own Nix store, as nix-serve does:
// every valid path of the store is catalogued (bbolt, apart from pushed
// paths), signed with the cache's keys and served, its NAR dumped from the
// file system.
//
// # Where path infos come from: the Nix daemon, not Nix's SQLite database
//
// Path infos (NAR hash and size, references, deriver, CA, signatures) come
// from the Nix daemon over its Unix socket (package nix/daemon, worker
// protocol 1.21 to 1.38: Nix 2.3 to current). Nix's database
// (/nix/var/nix/db/db.sqlite) is only stat'ed, to notice changes cheaply.
//
// Measured on the development machine (2 vCPU Xeon, shared and loaded,
// Debian's Nix 2.8, the host store of 3,473 valid paths):
//
//	                                        nix-daemon   SQLite (python3 sqlite3, connection kept open)
//	lookup by hash part + info + references  85-139 µs    8 µs
//	lookup of a hash part that is not there  34 µs        4 µs
//	every valid path                         2.8 ms       1.1 ms
//	(SQLite opening the database for each lookup: 86 µs)
//
// and the first sync of the whole store (3,473 QueryPathInfo, 4 signer
// calls, 4 bbolt transactions) took 268 ms.
//
// SQLite is some 10x faster per lookup, and it does not matter: lookups are
// answered from the bbolt catalogue (microseconds); the daemon is asked
// only on a catalogue miss and by the sync, which runs when the store
// changes. Against the daemon's tens of microseconds, SQLite would cost:
//   - cgo (the binaries are built with CGO_ENABLED=0) or a large pure-Go
//     SQLite translation as a dependency;
//   - dependence on the schema of Nix's database, which is Nix's private
//     business and has changed across versions, where the worker protocol
//     is versioned and negotiated;
//   - locking and access: Nix runs the database in WAL mode, where a
//     reader must write db.sqlite-shm (root's) or open the database
//     immutable, ignoring Nix's locks and risking torn reads; the daemon
//     socket is open to every allowed user.
//
// The daemon also validates what it returns and computes nothing we would
// have to redo (signatures and CA as Nix sees them).
//
// # NARs: dumped from the file system, not asked of the daemon
//
// A NAR is dumped from the store directory by package nardump, which
// starts at any offset without reading what comes before (ranges) and
// reads file contents straight into the gRPC chunk. Measured as above:
// nardump 15.8 GB/s for a 64 MiB file, 1.4 GB/s for 2048 files of 8 KiB,
// 11 µs for a one-file path (nar.DumpPath: 10.9 GB/s, 1.2 GB/s, 367 µs,
// its 1 MiB buffer allocated per call); the daemon's NarFromPath: 2.5
// GB/s for 50 MiB, 0.55 GB/s for a small path, a daemon process per
// concurrent stream, and no offsets. So there is no option to use it: the
// index needs read access to the store directory, which a binary cache
// on the host has anyway.
//
// # Keeping the catalogue current
//
// Run polls, every SyncInterval, the mtimes and sizes of the store
// directory and of the database and its WAL; when they change it syncs:
// QueryAllValidPaths, diffed against the catalogue in key order; new paths
// get QueryPathInfo and are signed in batches; paths gone are confirmed
// invalid with QueryValidPaths before they are dropped (so that a path
// added by a lookup meanwhile is kept). A change within a second of the
// stat (coarse mtimes) syncs once more on the next poll, and a full sync
// runs every ten minutes whatever the mtimes say. A lookup that misses the
// catalogue asks the daemon, so a new path is served at once.
//
// # Signing
//
// Local paths carry the cache's signatures, asked of the signer in batches
// when they are catalogued, beside the signatures Nix has for them. When
// the signer is down they are recorded unsigned and signed later, in the
// background or when asked for; an unsigned path is never served: its
// lookup is Unavailable until it is signed.
package localstore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nixcache/nixcache/nix/compression"
	"github.com/nixcache/nixcache/nix/daemon"
	"github.com/nixcache/nixcache/nix/nardump"
	"github.com/nixcache/nixcache/nix/storepath"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/catalog"
	"github.com/nixcache/nixcache/services/index/internal/fault"
	"github.com/nixcache/nixcache/services/index/internal/narstore"
	"github.com/nixcache/nixcache/services/index/internal/signerclient"
)

// Daemon is what the local store asks of the Nix daemon: the methods of
// nix/daemon's Conn, shared through a pool by PoolDaemon.
type Daemon interface {
	// QueryAllValidPaths returns every valid path, absolute.
	QueryAllValidPaths(ctx context.Context) ([]string, error)
	// QueryValidPaths returns those of paths that are valid.
	QueryValidPaths(ctx context.Context, paths []string) ([]string, error)
	// QueryPathFromHashPart returns the valid path with this hash part, or
	// an error wrapping daemon.ErrNotFound.
	QueryPathFromHashPart(ctx context.Context, hashPart string) (string, error)
	// QueryPathInfo returns what the daemon knows of a valid path, or an
	// error wrapping daemon.ErrNotFound.
	QueryPathInfo(ctx context.Context, storePath string) (*daemon.PathInfo, error)
}

// Signer signs fingerprints with the cache's keys.
type Signer = signerclient.Signer

// Config configures a Store.
type Config struct {
	// StoreDir is the store directory, logical and physical: paths are
	// named and dumped from there.
	StoreDir string
	// NixDB is Nix's database, stat'ed (with its -wal) to notice changes.
	NixDB string
	// SyncInterval is how often the store is checked for changes.
	SyncInterval time.Duration
	// SignTimeout bounds each call to the signer.
	SignTimeout time.Duration
	Log         *slog.Logger
}

// Store serves the host's store from the catalogue, the daemon and the
// file system. Its methods are safe for concurrent use; Run runs once.
type Store struct {
	cfg    Config
	cat    *catalog.Catalog
	daemon Daemon
	signer Signer
	now    func() time.Time

	// daemonFailing is set while lookups cannot reach the daemon.
	daemonFailing atomic.Bool

	// copies hears of the paths catalogued and of the compressed copies
	// dropped with the paths gone (package hostnar); nil: none are kept.
	copies Copies
}

// Copies keeps compressed copies of the local paths' NARs (package
// hostnar).
type Copies interface {
	// Appeared notes paths just catalogued.
	Appeared(hashParts []string)
	// Forget removes the files of copies dropped with their paths.
	Forget(copies []catalog.HostNar)
}

// New returns a Store over the catalogue's local paths.
func New(cfg Config, cat *catalog.Catalog, d Daemon, s Signer) *Store {
	return &Store{cfg: cfg, cat: cat, daemon: d, signer: s, now: time.Now}
}

// WithCopies has the store tell c of the paths it catalogues and of the
// copies dropped with the paths it forgets; call it before Run.
func (s *Store) WithCopies(c Copies) *Store {
	s.copies = c
	return s
}

// appeared tells the copies of paths just catalogued.
func (s *Store) appeared(infos []*indexv1.PathInfo) {
	if s.copies == nil || len(infos) == 0 {
		return
	}
	hashes := make([]string, 0, len(infos))
	for _, info := range infos {
		if h := hashPartOf(s.cfg.StoreDir, info.GetStorePath()); h != "" {
			hashes = append(hashes, h)
		}
	}
	s.copies.Appeared(hashes)
}

// PathInfo returns the signed info of the local path with this hash part:
// from the catalogue or, on a miss, from the daemon (and then catalogued).
// An unsigned path is signed first; if the signer cannot, the error is of
// class fault.ErrUnavailable. A path the daemon does not know, or when it
// cannot be asked, is fault.ErrNotFound.
func (s *Store) PathInfo(ctx context.Context, hashPart string) (*indexv1.PathInfo, error) {
	info, signed, err := s.find(ctx, hashPart)
	if err != nil || signed {
		return info, err
	}
	if err := s.sign(ctx, []*indexv1.PathInfo{info}); err != nil {
		return nil, fault.Unavailable("store path %s is not signed yet: %v", info.GetStorePath(), err)
	}
	if _, err := s.cat.SignedLocal([]*indexv1.PathInfo{info}); err != nil {
		return nil, err
	}
	return info, nil
}

// Find returns the info of the local path with this hash part, signed or
// not, as PathInfo finds it; for serving its NAR.
func (s *Store) Find(ctx context.Context, hashPart string) (*indexv1.PathInfo, error) {
	info, _, err := s.find(ctx, hashPart)
	return info, err
}

func (s *Store) find(ctx context.Context, hashPart string) (*indexv1.PathInfo, bool, error) {
	info, signed, err := s.cat.LocalPathInfo(hashPart)
	if errors.Is(err, fault.ErrNotFound) {
		return s.lookup(ctx, hashPart)
	}
	return info, signed, err
}

// lookup asks the daemon for the path with this hash part and catalogues
// it, signed if the signer answers.
func (s *Store) lookup(ctx context.Context, hashPart string) (*indexv1.PathInfo, bool, error) {
	notFound := func(err error) error {
		if errors.Is(err, daemon.ErrNotFound) {
			return fault.NotFound("store path %s is not in the cache", hashPart)
		}
		if ctx.Err() != nil {
			return fmt.Errorf("look %s up in the Nix daemon: %w", hashPart, ctx.Err())
		}
		// The catalogue is the best answer there is while the daemon is
		// away: a 404, not an error that would fail the client's build.
		// Logged as a warning once, not for every request while it lasts.
		level := slog.LevelDebug
		if !s.daemonFailing.Swap(true) {
			level = slog.LevelWarn
		}
		s.cfg.Log.Log(ctx, level, "nix daemon lookup failed; answering from the catalogue", "hash_part", hashPart, "err", err)
		return fault.NotFound("store path %s is not in the cache", hashPart)
	}
	p, err := s.daemon.QueryPathFromHashPart(ctx, hashPart)
	if err != nil {
		return nil, false, notFound(err)
	}
	di, err := s.daemon.QueryPathInfo(ctx, p)
	if err != nil {
		return nil, false, notFound(err)
	}
	if s.daemonFailing.Swap(false) {
		s.cfg.Log.InfoContext(ctx, "nix daemon lookups work again")
	}
	info, err := s.toPathInfo(di)
	if err != nil {
		s.cfg.Log.WarnContext(ctx, "local path cannot be served", "store_path", p, "err", err)
		return nil, false, fault.NotFound("store path %s is not in the cache", hashPart)
	}
	signErr := s.sign(ctx, []*indexv1.PathInfo{info})
	if err := s.cat.PutLocal([]catalog.LocalPath{{Info: info, Signed: signErr == nil}}); err != nil {
		return nil, false, err
	}
	s.appeared([]*indexv1.PathInfo{info})
	s.cfg.Log.DebugContext(ctx, "catalogued local path on lookup", "store_path", p, "signed", signErr == nil)
	if signErr != nil {
		return nil, false, fault.Unavailable("store path %s is not signed yet: %v", p, signErr)
	}
	return info, true, nil
}

// Present returns the hash parts, in the order given and without repeats,
// of local paths: catalogued, or found by the daemon (and then catalogued).
func (s *Store) Present(ctx context.Context, hashParts []string) ([]string, error) {
	present, err := s.cat.PresentLocal(hashParts)
	if err != nil {
		return nil, err
	}
	if len(present) == len(hashParts) {
		return present, nil
	}
	found := make(map[string]bool, len(hashParts))
	for _, h := range present {
		found[h] = true
	}
	seen := make(map[string]bool, len(hashParts))
	var out []string
	for _, h := range hashParts {
		if seen[h] {
			continue
		}
		seen[h] = true
		if found[h] {
			out = append(out, h)
			continue
		}
		_, _, err := s.lookup(ctx, h)
		switch {
		case err == nil || errors.Is(err, fault.ErrUnavailable):
			out = append(out, h) // present, if not signed yet
		case !errors.Is(err, fault.ErrNotFound):
			return nil, err
		}
	}
	return out, nil
}

// OpenNar opens the byte range [offset, offset+length) (length 0: to the
// end) of the NAR of the local path info, dumped from the store. A path no
// longer on disk is fault.ErrNotFound; an offset at or beyond the end,
// fault.ErrOutOfRange.
func (s *Store) OpenNar(ctx context.Context, info *indexv1.PathInfo, offset, length uint64) (*narstore.Range, error) {
	sp, err := storepath.Parse(s.cfg.StoreDir, info.GetStorePath())
	if err != nil {
		return nil, fmt.Errorf("open NAR of local path: %w", err)
	}
	total := info.GetNarSize()
	if offset >= total && !(offset == 0 && total == 0) {
		return nil, fault.OutOfRange("offset %d is at or beyond the end of the %d-byte NAR", offset, total)
	}
	n := total - offset
	if length > 0 && length < n {
		n = length
	}
	r, err := nardump.Open(filepath.Join(s.cfg.StoreDir, sp.Base()), offset)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fault.NotFound("store path %s is no longer in the store", info.GetStorePath())
	}
	if err != nil {
		return nil, fmt.Errorf("open NAR of local path: %w", err)
	}
	return narstore.NewRange(ctx, r, r, total, n, compression.None, offset+n == total), nil
}

// toPathInfo converts the daemon's info for the catalogue: base names,
// sorted references, no file (the NAR is dumped from the store).
func (s *Store) toPathInfo(di *daemon.PathInfo) (*indexv1.PathInfo, error) {
	if _, err := storepath.Parse(s.cfg.StoreDir, di.StorePath); err != nil {
		return nil, err
	}
	if di.NarSize == 0 {
		return nil, errors.New("the daemon does not know its NAR size")
	}
	refs := make([]string, 0, len(di.References))
	for _, r := range di.References {
		rp, err := storepath.Parse(s.cfg.StoreDir, r)
		if err != nil {
			return nil, fmt.Errorf("reference: %w", err)
		}
		refs = append(refs, rp.Base())
	}
	slices.Sort(refs)
	info := &indexv1.PathInfo{
		StorePath:  di.StorePath,
		NarHash:    di.NarHash.String(),
		NarSize:    di.NarSize,
		References: slices.Compact(refs),
		Signatures: slices.Clone(di.Sigs),
		Ca:         di.CA,
		HostStore:  true,
	}
	if di.Deriver != "" {
		// A deriver we cannot name is left out, as Nix leaves out one it
		// does not know.
		if dp, err := storepath.Parse(s.cfg.StoreDir, di.Deriver); err == nil {
			info.Deriver = dp.Base()
		}
	}
	if !di.RegistrationTime.IsZero() {
		info.RegistrationTime = timestamppb.New(di.RegistrationTime)
	}
	return info, nil
}

// hashPartOf returns the hash part of an absolute store path of storeDir,
// or "" when it is not one.
func hashPartOf(storeDir, p string) string {
	base, ok := strings.CutPrefix(p, storeDir+"/")
	if !ok || len(base) < storepath.HashPartLen+2 || base[storepath.HashPartLen] != '-' {
		return ""
	}
	return base[:storepath.HashPartLen]
}
