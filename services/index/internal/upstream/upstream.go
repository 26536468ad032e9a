// Package upstream makes the index a pull-through cache: a path it does
// not hold is looked up in upstream binary caches (cache.nixos.org, another
// nixcache, a static `nix copy --to file://` directory behind a web
// server), in order. An upstream path is accepted only when one of its
// signatures verifies with a trusted upstream key; its NAR, and those of
// every path of its closure the index lacks, are then downloaded and
// stored through the same verified ingest as a push (file hash and size,
// NAR hash and size), and published through the same publisher, which
// signs them with the cache's own key and keeps the upstream signature.
//
// Concurrent lookups of one path share one fetch (singleflight). The fetch
// runs on its own budget (Config.FetchTimeout), not the caller's: a caller
// whose deadline comes first gets an Unavailable error (503, "retry") and
// the fetch goes on, so that its retry finds the path published. A path no
// upstream has, or whose upstream copy was refused, is remembered as
// absent for Config.NegativeTTL. An upstream that cannot be reached, or
// does not answer within Config.Timeout, is skipped for NegativeTTL too, so
// that every miss is answered at once while it is down.
package upstream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"

	"github.com/nixcache/nixcache/nix/signature"
	"github.com/nixcache/nixcache/nix/storepath"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/catalog"
	"github.com/nixcache/nixcache/services/index/internal/fault"
	"github.com/nixcache/nixcache/services/index/internal/narstore"
	"github.com/nixcache/nixcache/services/index/internal/publish"
)

// Config configures a Puller.
type Config struct {
	// URLs are the upstream caches, asked in this order (http or https).
	URLs []string
	// Keys are the trusted upstream public keys: an upstream path must
	// carry a signature by one of them.
	Keys []signature.PublicKey
	// StoreDir is the store directory of the cached paths.
	StoreDir string
	// Timeout bounds connecting to an upstream, each narinfo lookup, the
	// wait for a NAR download to start, and any silence during one.
	Timeout time.Duration
	// NegativeTTL is how long a path found on no upstream is answered
	// absent without asking again, and how long an unreachable upstream
	// is skipped; 0 remembers nothing.
	NegativeTTL time.Duration
	// FetchTimeout bounds fetching one path with its missing closure.
	FetchTimeout time.Duration
	Log          *slog.Logger
	// Registerer, when set, gets the nixcache_upstream_* metrics.
	Registerer prometheus.Registerer
}

// Validate checks the configuration, naming the flag at fault.
func (c Config) Validate() error {
	var errs []string
	if len(c.URLs) == 0 {
		errs = append(errs, "no -upstream")
	}
	for _, u := range c.URLs {
		if _, err := parseBase(u); err != nil {
			errs = append(errs, "-upstream: "+err.Error())
		}
	}
	if len(c.Keys) == 0 {
		errs = append(errs, "-upstream needs at least one -upstream-key: a path is accepted only with a signature by a trusted key")
	}
	if err := storepath.ValidateStoreDir(c.StoreDir); err != nil {
		errs = append(errs, "-store-dir: "+err.Error())
	}
	if c.Timeout <= 0 {
		errs = append(errs, "-upstream-timeout must be > 0")
	}
	if c.NegativeTTL < 0 {
		errs = append(errs, "-upstream-negative-ttl must be >= 0")
	}
	if c.FetchTimeout <= 0 {
		errs = append(errs, "-upstream-fetch-timeout must be > 0")
	}
	if c.Log == nil {
		errs = append(errs, "no logger")
	}
	if len(errs) > 0 {
		return errors.New(strings.Join(errs, "; "))
	}
	return nil
}

// parseBase parses an upstream URL: http or https, a host, no query or
// fragment. The path gets a trailing slash, so that narinfo and NAR URLs
// resolve below it.
func parseBase(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("%q: %v", raw, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("%q: want an http:// or https:// URL", raw)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("%q: no host", raw)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return nil, fmt.Errorf("%q: want no query, fragment or user", raw)
	}
	if !strings.HasSuffix(u.Path, "/") {
		u.Path += "/"
		u.RawPath = ""
	}
	return u, nil
}

// replyMargin is how long (at most) before the caller's deadline a
// lookup still in progress answers Unavailable, so that the caller reads
// that answer and not its own deadline.
const replyMargin = 500 * time.Millisecond

// Puller fetches paths from the upstream caches into the index.
type Puller struct {
	cfg       Config
	upstreams []*upstreamCache
	http      *httpClient
	catalog   *catalog.Catalog
	nars      *narstore.Store
	publisher *publish.Publisher
	log       *slog.Logger
	metrics   *metricSet
	now       func() time.Time

	// roots shares the fetch of one requested path between callers;
	// narFiles the download of one NAR file between fetches.
	roots    singleflight.Group
	narFiles singleflight.Group
	negative *negativeCache
	// waiting counts the callers waiting for a fetch (for tests).
	waiting atomic.Int64

	// ctx bounds every fetch; Close cancels it and waits for them.
	ctx    context.Context
	cancel context.CancelFunc
	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup
}

// New returns a Puller storing into the index's catalogue, NAR store and
// publisher.
func New(cfg Config, cat *catalog.Catalog, nars *narstore.Store, pub *publish.Publisher) (*Puller, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	m := newMetrics(cfg.Registerer)
	p := &Puller{
		cfg:       cfg,
		http:      newHTTPClient(cfg.Timeout, m),
		catalog:   cat,
		nars:      nars,
		publisher: pub,
		log:       cfg.Log,
		metrics:   m,
		now:       time.Now,
		negative:  newNegativeCache(negativeCacheSize),
	}
	for _, raw := range cfg.URLs {
		base, _ := parseBase(raw)
		p.upstreams = append(p.upstreams, &upstreamCache{base: base, name: strings.TrimSuffix(base.String(), "/")})
		p.metrics.initUpstream(strings.TrimSuffix(base.String(), "/"))
	}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	return p, nil
}

// Close cancels the fetches in progress and waits for them to end.
func (p *Puller) Close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.cancel()
	p.wg.Wait()
	p.http.close()
}

// PathInfo returns the published path with this hash part after fetching
// it from an upstream cache: an error of class fault.ErrNotFound when no
// upstream has it (or its copy was refused), fault.ErrUnavailable when
// the fetch is still going on at the caller's deadline (it goes on: a
// retry finds it) or the signer is down. The caller has checked that the
// index does not hold the path.
func (p *Puller) PathInfo(ctx context.Context, hashPart string) (*indexv1.PathInfo, error) {
	if e, ok := p.negative.get(hashPart, p.now()); ok {
		p.metrics.lookup(resultNegativeCached)
		return nil, fault.NotFound("store path %s is not in the cache: %s (an answer remembered until %s)",
			hashPart, e.reason, e.until.UTC().Format(time.RFC3339))
	}
	ch := p.roots.DoChan(hashPart, func() (any, error) { return p.fetchRoot(hashPart) })
	waitCtx, cancel := replyBy(ctx)
	defer cancel()
	p.waiting.Add(1)
	defer p.waiting.Add(-1)
	select {
	case res := <-ch:
		if res.Err != nil {
			return nil, res.Err
		}
		return res.Val.(*indexv1.PathInfo), nil
	case <-waitCtx.Done():
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("wait for the upstream fetch of %s: %w", hashPart, err)
		}
		p.metrics.lookup(resultPending)
		return nil, fault.Unavailable("store path %s is being fetched from upstream and is not there yet: retry shortly", hashPart)
	}
}

// replyBy returns ctx shortened by replyMargin, or by a fifth of the
// time left when that is shorter.
func replyBy(ctx context.Context) (context.Context, context.CancelFunc) {
	deadline, ok := ctx.Deadline()
	if !ok {
		return context.WithCancel(ctx)
	}
	margin := min(replyMargin, time.Until(deadline)/5)
	return context.WithDeadline(ctx, deadline.Add(-max(margin, 0)))
}

// errClosed is the answer once Close was called.
var errClosed = fault.Unavailable("the index is shutting down")

// fetchRoot fetches one requested path, on the Puller's own budget, and
// classifies the outcome for every caller waiting on it.
func (p *Puller) fetchRoot(hashPart string) (*indexv1.PathInfo, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, errClosed
	}
	p.wg.Add(1)
	p.mu.Unlock()
	defer p.wg.Done()

	ctx, cancel := context.WithTimeout(p.ctx, p.cfg.FetchTimeout)
	defer cancel()
	start := time.Now()
	info, n, err := p.fetch(ctx, hashPart)
	var miss *missError
	switch {
	case err == nil:
		p.metrics.lookup(resultFetched)
		p.log.Info("fetched from upstream", "store_path", info.GetStorePath(), "paths", n,
			"duration", time.Since(start).Round(time.Millisecond))
		return info, nil
	case errors.As(err, &miss):
		p.metrics.lookup(miss.result)
		if miss.remember && p.cfg.NegativeTTL > 0 {
			p.negative.put(hashPart, negativeEntry{until: p.now().Add(p.cfg.NegativeTTL), reason: miss.Error()}, p.now())
		}
		if miss.result != resultMiss {
			p.log.Warn("upstream path not fetched", "hash_part", hashPart, "result", miss.result, "err", miss.err)
		}
		return nil, fault.NotFound("store path %s is not in the cache: %v", hashPart, miss.err)
	case p.ctx.Err() != nil:
		return nil, errClosed
	case errors.Is(err, context.DeadlineExceeded):
		p.metrics.lookup(resultUnreachable)
		p.log.Warn("upstream fetch took longer than -upstream-fetch-timeout", "hash_part", hashPart,
			"fetch_timeout", p.cfg.FetchTimeout, "err", err)
		return nil, fault.NotFound("store path %s is not in the cache: fetching it from upstream took longer than -upstream-fetch-timeout %s",
			hashPart, p.cfg.FetchTimeout)
	case errors.Is(err, fault.ErrUnavailable):
		p.metrics.lookup(resultFailed)
		p.log.Warn("upstream path not published", "hash_part", hashPart, "err", err)
		return nil, err
	default:
		p.metrics.lookup(resultFailed)
		p.log.Error("upstream fetch failed", "hash_part", hashPart, "err", err)
		return nil, fmt.Errorf("fetch %s from upstream: %w", hashPart, err)
	}
}

// missError is a fetch that found nothing to serve, for a reason that is
// upstream's: nobody has the path (result miss), an upstream offered a
// copy that was refused (refused), or could not be asked or failed
// (unreachable). remember says whether the answer is negatively cached.
type missError struct {
	result   string
	remember bool
	err      error
}

func (e *missError) Error() string { return e.err.Error() }
func (e *missError) Unwrap() error { return e.err }

// upstreamCache is one upstream and whether it is being skipped.
type upstreamCache struct {
	base *url.URL
	name string // base without its trailing slash, for logs and metrics

	mu        sync.Mutex
	downUntil time.Time
}

// down reports whether the upstream is being skipped at now.
func (u *upstreamCache) down(now time.Time) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return now.Before(u.downUntil)
}

// markDown skips the upstream until until; it reports whether it was up.
func (u *upstreamCache) markDown(now, until time.Time) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	wasUp := !now.Before(u.downUntil)
	u.downUntil = until
	return wasUp
}

// negativeCacheSize bounds the hash parts remembered as absent.
const negativeCacheSize = 1 << 16

// negativeEntry is a path found absent: why, and until when that holds.
type negativeEntry struct {
	until  time.Time
	reason string
}

// negativeCache remembers hash parts found on no upstream, or refused.
type negativeCache struct {
	mu      sync.Mutex
	max     int
	entries map[string]negativeEntry
}

func newNegativeCache(max int) *negativeCache {
	return &negativeCache{max: max, entries: map[string]negativeEntry{}}
}

// get returns the entry of hashPart, if one holds at now.
func (c *negativeCache) get(hashPart string, now time.Time) (negativeEntry, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[hashPart]
	if ok && !now.Before(e.until) {
		delete(c.entries, hashPart)
		return negativeEntry{}, false
	}
	return e, ok
}

// put remembers hashPart as absent. When full, it forgets the expired
// entries, then any, to make room.
func (c *negativeCache) put(hashPart string, e negativeEntry, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.entries) >= c.max {
		for h, old := range c.entries {
			if !now.Before(old.until) {
				delete(c.entries, h)
			}
		}
		for h := range c.entries {
			if len(c.entries) < c.max {
				break
			}
			delete(c.entries, h)
		}
	}
	c.entries[hashPart] = e
}
