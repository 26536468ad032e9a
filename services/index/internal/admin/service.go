// Package admin implements nixcache.index.v1.AdminService: listing,
// showing and deleting paths, statistics, verification and quarantine,
// garbage collection with pins, and key rotation (re-signing every path).
// Download times and traffic counters come from the Tracker.
package admin

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nixcache/nixcache/nix/nixhash"
	"github.com/nixcache/nixcache/nix/storepath"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	signerv1 "github.com/nixcache/nixcache/proto/nixcache/signer/v1"
	"github.com/nixcache/nixcache/services/index/internal/catalog"
	"github.com/nixcache/nixcache/services/index/internal/fault"
	"github.com/nixcache/nixcache/services/index/internal/narstore"
	"github.com/nixcache/nixcache/services/index/internal/signerclient"
	"github.com/nixcache/nixcache/services/index/internal/tokens"
)

// Page sizes of ListPaths.
const (
	DefaultPageSize = 100
	MaxPageSize     = 1000
)

// Config configures the service.
type Config struct {
	StoreDir    string
	SignTimeout time.Duration
	// GCMaxSize and GCMaxAge are the default retention policies (0: none).
	GCMaxSize uint64
	GCMaxAge  time.Duration
	Log       *slog.Logger
	// Now is the clock of garbage collection and pins; nil: time.Now.
	Now func() time.Time
}

// Service implements indexv1.AdminServiceServer.
type Service struct {
	indexv1.UnimplementedAdminServiceServer

	cfg     Config
	cat     *catalog.Catalog
	nars    *narstore.Store
	signer  *signerclient.Client
	tracker *Tracker
	now     func() time.Time
	paths   PathChecker // nil: FindMissingPaths is unimplemented
	// tokens is what the token methods manage (tokens.go); nil: none.
	tokens *tokens.Store

	// mu serialises what deletes or rewrites paths (delete, GC, verify,
	// key changes), so that each sees the catalogue it plans on.
	mu sync.Mutex
}

// New returns the service.
func New(cfg Config, cat *catalog.Catalog, nars *narstore.Store, signer signerv1.SignerServiceClient, tracker *Tracker) *Service {
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	return &Service{cfg: cfg, cat: cat, nars: nars, signer: signerclient.New(signer), tracker: tracker, now: now}
}

// hashPartOf parses a path argument: a hash part, a base name or an
// absolute store path.
func (s *Service) hashPartOf(field, arg string) (string, error) {
	switch {
	case arg == "":
		return "", fault.Invalid("%s is empty: want a hash part, a base name or a store path", field)
	case strings.HasPrefix(arg, "/"):
		p, err := storepath.Parse(s.cfg.StoreDir, arg)
		if err != nil {
			return "", fault.Invalid("%s: %v", field, err)
		}
		return p.HashPart, nil
	case len(arg) == 32:
		if err := storepath.ValidateHashPart(arg); err != nil {
			return "", fault.Invalid("%s: %v", field, err)
		}
		return arg, nil
	default:
		p, err := storepath.ParseBase(arg)
		if err != nil {
			return "", fault.Invalid("%s: %v", field, err)
		}
		return p.HashPart, nil
	}
}

func summary(e *catalog.Entry) *indexv1.PathSummary {
	ps := &indexv1.PathSummary{
		StorePath:        e.Info.GetStorePath(),
		NarSize:          e.Info.GetNarSize(),
		FileSize:         e.Info.GetFile().GetFileSize(),
		Compression:      e.Info.GetFile().GetCompression(),
		Source:           indexv1.Source_SOURCE_PUSHED,
		RegistrationTime: e.Info.GetRegistrationTime(),
		Pinned:           e.Pin != nil,
		Quarantined:      e.Quarantined,
	}
	if e.Local {
		ps.Source = indexv1.Source_SOURCE_LOCAL
		ps.Compression = "none"
	}
	if e.Access.Last != 0 {
		ps.LastAccess = timestamppb.New(time.Unix(e.Access.Last, 0))
	}
	return ps
}

// ListPaths lists paths in store path order.
func (s *Service) ListPaths(ctx context.Context, req *indexv1.ListPathsRequest) (*indexv1.ListPathsResponse, error) {
	size := int(req.GetPageSize())
	switch {
	case size < 0 || size > MaxPageSize:
		return nil, fault.Status(fault.Invalid("page_size %d: want 0 (default %d) to %d", size, DefaultPageSize, MaxPageSize))
	case size == 0:
		size = DefaultPageSize
	}
	after := req.GetPageToken()
	if after != "" {
		if err := storepath.ValidateHashPart(after); err != nil {
			return nil, fault.Status(fault.Invalid("page_token: not a token ListPaths returned: %v", err))
		}
	}
	if err := storepath.ValidateName(req.GetQuery()); req.GetQuery() != "" && err != nil {
		return nil, fault.Status(fault.Invalid("query: %v", err))
	}
	s.tracker.flushQuietly()
	entries, more, err := s.cat.List(after, req.GetQuery(), size)
	if err != nil {
		return nil, fault.Status(err)
	}
	resp := &indexv1.ListPathsResponse{}
	for _, e := range entries {
		resp.Paths = append(resp.Paths, summary(e))
	}
	if more && len(entries) > 0 {
		resp.NextPageToken = entries[len(entries)-1].HashPart
	}
	return resp, nil
}

// GetPath shows one path.
func (s *Service) GetPath(ctx context.Context, req *indexv1.GetPathRequest) (*indexv1.GetPathResponse, error) {
	h, err := s.hashPartOf("path", req.GetPath())
	if err != nil {
		return nil, fault.Status(err)
	}
	s.tracker.flushQuietly()
	e, err := s.cat.Lookup(h)
	if err != nil {
		return nil, fault.Status(err)
	}
	resp := &indexv1.GetPathResponse{Info: e.Info, Summary: summary(e), Downloads: e.Access.Downloads}
	if !e.Local {
		refs, err := s.cat.Referrers(h)
		if err != nil {
			return nil, fault.Status(err)
		}
		for _, r := range refs {
			if re, err := s.cat.Lookup(r); err == nil && !re.Local {
				resp.Referrers = append(resp.Referrers, re.Info.GetStorePath())
			}
		}
		slices.Sort(resp.Referrers)
	}
	return resp, nil
}

// DeletePath deletes a pushed path (and, when asked, its referrers).
func (s *Service) DeletePath(ctx context.Context, req *indexv1.DeletePathRequest) (*indexv1.DeletePathResponse, error) {
	h, err := s.hashPartOf("path", req.GetPath())
	if err != nil {
		return nil, fault.Status(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// The path and its referrers, not the whole catalogue.
	snap, err := s.cat.ReferrerSnapshot(h)
	if err != nil {
		return nil, fault.Status(err)
	}
	target := snap.Paths[h]
	if target == nil {
		if _, err := s.cat.Lookup(h); err == nil {
			return nil, fault.Status(fault.Precondition("store path %s is served from the host's store: only pushed paths can be deleted", req.GetPath()))
		}
		return nil, fault.Status(fault.NotFound("store path %s is not in the cache", req.GetPath()))
	}
	g := newGraph(snap)
	set := g.transitiveReferrers(h)
	if len(set) > 1 && !req.GetWithReferrers() {
		var refs []string
		for _, r := range g.referrers[h] {
			refs = append(refs, snap.Paths[r].Info.GetStorePath())
		}
		slices.Sort(refs)
		return nil, fault.Status(fault.Precondition("store path %s is referred to by %s: delete those first, or set with_referrers",
			target.Info.GetStorePath(), strings.Join(refs, ", ")))
	}
	var pinned []string
	for p := range set {
		if snap.Paths[p].Pin != nil {
			pinned = append(pinned, snap.Paths[p].Info.GetStorePath())
		}
	}
	if len(pinned) > 0 {
		slices.Sort(pinned)
		return nil, fault.Status(fault.Precondition("pinned: %s; unpin first", strings.Join(pinned, ", ")))
	}
	order := g.referrersFirst(set)
	resp := &indexv1.DeletePathResponse{FreedBytes: g.freedBytes(set)}
	for _, p := range order {
		resp.Deleted = append(resp.Deleted, snap.Paths[p].Info.GetStorePath())
	}
	if req.GetDryRun() {
		return resp, nil
	}
	if err := s.delete(ctx, order); err != nil {
		return nil, fault.Status(err)
	}
	s.cfg.Log.InfoContext(ctx, "deleted paths", "paths", resp.Deleted, "freed_bytes", resp.FreedBytes)
	return resp, nil
}

// delete removes paths from the catalogue, then the files no path uses.
// If a path published meanwhile refers to one of them, nothing is deleted
// (fault.ErrPrecondition).
func (s *Service) delete(ctx context.Context, hashParts []string) error {
	freed, err := s.cat.DeletePaths(hashParts)
	if err != nil {
		return err
	}
	s.removeFiles(ctx, freed)
	return nil
}

// removeFiles removes NAR files whose records went (unless uploaded
// again since), logging what it cannot remove.
func (s *Service) removeFiles(ctx context.Context, freed []*indexv1.NarFile) {
	if err := s.cat.RemoveFreed(freed, s.nars.Remove); err != nil {
		s.cfg.Log.WarnContext(ctx, "NAR files left on disk", "err", err)
	}
}

// GetStats reports the catalogue's size and the traffic since start.
func (s *Service) GetStats(ctx context.Context, req *indexv1.GetStatsRequest) (*indexv1.GetStatsResponse, error) {
	st, err := s.stats()
	if err != nil {
		return nil, fault.Status(err)
	}
	t := s.tracker
	st.NarinfoHits, st.NarinfoMisses = t.narinfoHits.Load(), t.narinfoMisses.Load()
	st.NarDownloads, st.NarBytesServed = t.narDownloads.Load(), t.narBytesSent.Load()
	return st, nil
}

// stats reads the catalogue's running totals: no scan, whatever its size.
func (s *Service) stats() (*indexv1.GetStatsResponse, error) {
	n, err := s.cat.Counts()
	if err != nil {
		return nil, err
	}
	st := &indexv1.GetStatsResponse{
		PushedPaths:      uint64(n.Pushed + n.Quarantined),
		LocalPaths:       uint64(n.LocalOnly),
		PinnedPaths:      uint64(n.Pinned),
		QuarantinedPaths: uint64(n.Quarantined),
		NarBytes:         n.PushedNarBytes + n.LocalOnlyNarBytes,
		StoredBytes:      n.FileBytes,
	}
	st.Paths = st.PushedPaths + st.LocalPaths
	return st, nil
}

// Pin pins a pushed path or its closure.
func (s *Service) Pin(ctx context.Context, req *indexv1.PinRequest) (*indexv1.PinResponse, error) {
	h, err := s.hashPartOf("path", req.GetPath())
	if err != nil {
		return nil, fault.Status(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e, err := s.cat.Lookup(h)
	if err != nil {
		return nil, fault.Status(err)
	}
	if e.Local {
		return nil, fault.Status(fault.Precondition("store path %s is served from the host's store, which garbage collection never touches: nothing to pin", e.Info.GetStorePath()))
	}
	pin := &indexv1.Pin{StorePath: e.Info.GetStorePath(), Closure: req.GetClosure(), Created: timestamppb.New(s.now())}
	if err := s.cat.PutPin(h, pin); err != nil {
		return nil, fault.Status(err)
	}
	return &indexv1.PinResponse{Pin: pin}, nil
}

// Unpin removes a pin.
func (s *Service) Unpin(ctx context.Context, req *indexv1.UnpinRequest) (*indexv1.UnpinResponse, error) {
	h, err := s.hashPartOf("path", req.GetPath())
	if err != nil {
		return nil, fault.Status(err)
	}
	if err := s.cat.DeletePin(h); err != nil {
		return nil, fault.Status(err)
	}
	return &indexv1.UnpinResponse{}, nil
}

// ListPins lists the pins.
func (s *Service) ListPins(ctx context.Context, req *indexv1.ListPinsRequest) (*indexv1.ListPinsResponse, error) {
	pins, err := s.cat.Pins()
	if err != nil {
		return nil, fault.Status(err)
	}
	return &indexv1.ListPinsResponse{Pins: pins}, nil
}

// graph is the reference graph of the pushed paths, by hash part; a
// reference to a path that is not pushed (local, or self) is left out.
type graph struct {
	snap       *catalog.Snapshot
	references map[string][]string
	referrers  map[string][]string
}

func newGraph(snap *catalog.Snapshot) *graph {
	g := &graph{snap: snap, references: map[string][]string{}, referrers: map[string][]string{}}
	for h, e := range snap.Paths {
		for _, ref := range e.Info.GetReferences() {
			if len(ref) < 32 || ref[:32] == h || snap.Paths[ref[:32]] == nil {
				continue
			}
			g.references[h] = append(g.references[h], ref[:32])
			g.referrers[ref[:32]] = append(g.referrers[ref[:32]], h)
		}
	}
	for _, m := range []map[string][]string{g.references, g.referrers} {
		for _, v := range m {
			sort.Strings(v)
		}
	}
	return g
}

// transitiveReferrers is h and every path that refers to it, directly or
// not.
func (g *graph) transitiveReferrers(h string) map[string]bool {
	return g.walk(h, g.referrers)
}

// closure is h and every path it refers to, directly or not.
func (g *graph) closure(h string) map[string]bool {
	return g.walk(h, g.references)
}

func (g *graph) walk(h string, edges map[string][]string) map[string]bool {
	set := map[string]bool{h: true}
	todo := []string{h}
	for len(todo) > 0 {
		p := todo[len(todo)-1]
		todo = todo[:len(todo)-1]
		for _, q := range edges[p] {
			if !set[q] {
				set[q] = true
				todo = append(todo, q)
			}
		}
	}
	return set
}

// level is the length of the longest chain of referrers above each path
// (0: nothing refers to it): sorting by level puts referrers first.
func (g *graph) levels() map[string]int {
	level := map[string]int{}
	var visit func(h string, depth int) int
	visiting := map[string]bool{}
	visit = func(h string, depth int) int {
		if l, ok := level[h]; ok {
			return l
		}
		if visiting[h] {
			return 0 // a cycle: cannot happen in a store, do not loop
		}
		visiting[h] = true
		l := 0
		for _, r := range g.referrers[h] {
			l = max(l, visit(r, depth+1)+1)
		}
		level[h] = l
		return l
	}
	for h := range g.snap.Paths {
		visit(h, 0)
	}
	return level
}

// referrersFirst orders set so that every path comes after the paths of
// set that refer to it.
func (g *graph) referrersFirst(set map[string]bool) []string {
	level := g.levels()
	out := make([]string, 0, len(set))
	for h := range set {
		out = append(out, h)
	}
	sort.Slice(out, func(i, j int) bool {
		if level[out[i]] != level[out[j]] {
			return level[out[i]] < level[out[j]]
		}
		return out[i] < out[j]
	})
	return out
}

// freedBytes is the size of the files that deleting set frees: those no
// path outside it uses.
func (g *graph) freedBytes(set map[string]bool) uint64 {
	if g.snap.FileUsedElsewhere != nil {
		// The snapshot holds the set alone and says which files other
		// paths use.
		freed := map[string]uint64{}
		for h := range set {
			nf := g.snap.Paths[h].Info.GetFile()
			if fh := nf.GetFileHash(); fh != "" && !g.snap.FileUsedElsewhere[fh] {
				freed[fh] = nf.GetFileSize()
			}
		}
		var total uint64
		for _, n := range freed {
			total += n
		}
		return total
	}
	users := map[string]int{}
	for _, e := range g.snap.Paths {
		users[e.Info.GetFile().GetFileHash()]++
	}
	var freed uint64
	for h := range set {
		nf := g.snap.Paths[h].Info.GetFile()
		users[nf.GetFileHash()]--
		if users[nf.GetFileHash()] == 0 && nf.GetFileHash() != "" {
			freed += nf.GetFileSize()
		}
	}
	return freed
}

// narHashOf parses a stored NAR hash.
func narHashOf(info *indexv1.PathInfo) (nixhash.Hash, error) {
	h, err := nixhash.Parse(info.GetNarHash())
	if err != nil {
		return nixhash.Hash{}, fmt.Errorf("%s: stored NarHash: %w", info.GetStorePath(), err)
	}
	return h, nil
}
