// Package httpapi serves the Nix binary-cache HTTP protocol (nix-cache-info,
// narinfos, NARs; reads and pushes) from the index and signer services.
package httpapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/nixcache/nixcache/platform/auth"
	"github.com/nixcache/nixcache/platform/logging"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
)

// Config configures a Handler.
type Config struct {
	Index indexv1.IndexServiceClient
	Auth  auth.Policy
	// Tokens, when set, is the policy's Authenticator asking the index:
	// the index watch (WatchIndex) drops its answers when tokens change.
	Tokens *IndexTokens
	Log    *slog.Logger

	// StoreDir is the store directory narinfos name, e.g. "/nix/store".
	StoreDir string
	// Priority is the cache priority nix-cache-info announces.
	Priority int
	// MaxNarinfoSize bounds a pushed narinfo, before and after decoding.
	MaxNarinfoSize int64
	// RequestTimeout bounds each unary index or signer call, and the wait
	// for the first message of a NAR stream.
	RequestTimeout time.Duration
	// TransferIdleTimeout bounds how long a NAR upload or download may make
	// no progress on the client's side (0: no bound).
	TransferIdleTimeout time.Duration
	// ZstdLocal compresses NARs served uncompressed (paths of the index's
	// local store, nix-serve URLs) with zstd on the fly for clients that
	// send Accept-Encoding: zstd.
	ZstdLocal bool
	// NarRedirect answers GET of a stored NAR file with a redirect (307) to
	// a presigned URL of it when the index keeps its files in a bucket,
	// so that the client downloads it from the bucket; otherwise, or for
	// the nix-serve URL forms, the NAR streams through the gateway.
	NarRedirect bool
	// NarinfoCacheTTL is how long a rendered narinfo is served from the
	// gateway's memory without asking the index again while the index
	// watch (WatchIndex) is not in sync, and so the bound on how long a
	// deleted, collected or quarantined path may still be served by this
	// gateway then; 0 caches nothing then. Only found paths are cached
	// then.
	NarinfoCacheTTL time.Duration
	// NarinfoCacheMaxAge is how long a narinfo, or a 404, is cached while
	// the index watch is in sync; every change the index reports drops
	// the answers for its paths at once. 0: no watch, NarinfoCacheTTL
	// alone.
	NarinfoCacheMaxAge time.Duration
	// NarinfoCacheSize bounds the cache's memory, in bytes (narinfos plus
	// about 320 bytes an entry); 0 means DefaultNarinfoCacheSize.
	NarinfoCacheSize int64
	// NarDir is the index's nars/ directory, readable by the gateway
	// (co-located, -nar-dir): a stored file the index names there is
	// served from it (sendfile, ranges) instead of through the index's
	// GetNar stream. "" streams everything. While the index watch is in
	// sync (NarinfoCacheMaxAge), the index's answers naming files are
	// kept as narinfos are, and the downloads are reported to the index
	// in batches (ReportDownloads).
	NarDir string
	// LocalStoreDir is the host's store directory, readable by the
	// gateway (same host as an index serving it, -local-store-dir): the
	// NARs of the host's paths are dumped from it by the gateway (large
	// files sent with sendfile) instead of streamed from the index. ""
	// streams them.
	LocalStoreDir string
	// UploadSpool is the path of the index's upload spool socket (its
	// -upload-spool, co-located): a NAR upload is written into a file the
	// index hands over there, and PutNar names it, instead of streaming
	// the bytes (spool.go). "" streams every upload; so does a spool
	// that cannot be reached.
	UploadSpool string

	// Landing serves GET and HEAD /; nil answers 404.
	Landing http.Handler
	// Admin serves the JSON admin API under /api/v1/; nil answers 404.
	Admin http.Handler
}

// Handler is the gateway's http.Handler.
type Handler struct {
	Config
	narinfos *narinfoCache // nil when NarinfoCacheTTL and NarinfoCacheMaxAge are 0
	narRoot  *os.Root      // NarDir; nil without one
	// narDirFile is NarDir open, for openBeneath; nil without one.
	narDirFile *os.File
	// spoolDenied warns once that UploadSpool refuses this gateway.
	spoolDenied sync.Once
	// narSources keeps the index's answers for NarDir and LocalStoreDir
	// while the index watch is in sync; nil without either or without
	// the watch.
	narSources *narSourceCache
	// downloads collects what is served from NarDir and LocalStoreDir
	// for the index; nil without either.
	downloads *downloadLog
	// cacheInfoBody is the nix-cache-info, made once.
	cacheInfoBody string
}

// ForwardedMethods are the index's methods that get the caller's
// credentials (auth.ForwardDialOptions): the writes, whose push scope the
// index checks again, so that a gateway taken over cannot publish without
// a valid token.
var ForwardedMethods = []string{
	indexv1.IndexService_PutNar_FullMethodName,
	indexv1.IndexService_PutPathInfo_FullMethodName,
	indexv1.IndexService_PutArtifact_FullMethodName,
}

// DefaultNarinfoCacheSize is the narinfo cache's size when the Config
// leaves it 0: about 50,000 narinfos of 1 KiB.
const DefaultNarinfoCacheSize = 64 << 20

// New returns a Handler serving the cache protocol.
func New(cfg Config) (*Handler, error) {
	switch {
	case cfg.Index == nil:
		return nil, errors.New("httpapi: index client is required")
	case cfg.Log == nil:
		return nil, errors.New("httpapi: logger is required")
	case cfg.MaxNarinfoSize <= 0:
		return nil, errors.New("httpapi: max narinfo size must be positive")
	case cfg.RequestTimeout <= 0:
		return nil, errors.New("httpapi: request timeout must be positive")
	case cfg.NarinfoCacheTTL < 0:
		return nil, errors.New("httpapi: narinfo cache TTL must not be negative")
	case cfg.NarinfoCacheMaxAge < 0:
		return nil, errors.New("httpapi: narinfo cache max age must not be negative")
	case cfg.NarinfoCacheSize < 0:
		return nil, errors.New("httpapi: narinfo cache size must not be negative")
	}
	if cfg.NarinfoCacheSize == 0 {
		cfg.NarinfoCacheSize = DefaultNarinfoCacheSize
	}
	h := &Handler{Config: cfg, narinfos: newNarinfoCache(cfg.NarinfoCacheTTL, cfg.NarinfoCacheMaxAge, cfg.NarinfoCacheSize)}
	h.cacheInfoBody = fmt.Sprintf("StoreDir: %s\nWantMassQuery: 1\nPriority: %d\n", cfg.StoreDir, cfg.Priority)
	if cfg.LocalStoreDir != "" {
		if st, err := os.Stat(cfg.LocalStoreDir); err != nil || !st.IsDir() {
			return nil, fmt.Errorf("httpapi: local store directory %s: not a readable directory (%w)", cfg.LocalStoreDir, err)
		}
	}
	if cfg.NarDir != "" {
		root, err := os.OpenRoot(cfg.NarDir)
		if err != nil {
			return nil, fmt.Errorf("httpapi: NAR directory: %w", err)
		}
		h.narRoot = root
		if h.narDirFile, err = os.Open(cfg.NarDir); err != nil {
			root.Close()
			return nil, fmt.Errorf("httpapi: NAR directory: %w", err)
		}
	}
	if cfg.NarDir != "" || cfg.LocalStoreDir != "" {
		h.downloads = newDownloadLog()
		if h.narinfos != nil {
			h.narSources = newNarSourceCache(cfg.NarinfoCacheMaxAge, DefaultNarSourceCacheEntries)
		}
	}
	return h, nil
}

// ServeHTTP tags the request with an id, routes it and logs it.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	id := requestID(r)
	// grpcutil's client interceptors pass the id on to the index.
	ctx := logging.WithRequestID(r.Context(), id)
	if r.Method == http.MethodPut {
		// The index checks a push's credentials again (ForwardedMethods).
		ctx = auth.WithForwarded(ctx, r.Header.Get("Authorization"))
	}
	r = r.WithContext(ctx)
	w.Header().Set(requestIDHeader, id)
	rec := &recorder{ResponseWriter: w}
	h.route(rec, r)
	code := rec.status(r.Context())
	level := accessLevel(r.Method, code)
	if !h.Log.Enabled(r.Context(), level) {
		return
	}
	h.Log.Log(r.Context(), level, "http request",
		"user", rec.user,
		"method", r.Method,
		"path", r.URL.Path,
		"status", code,
		"bytes", rec.bytes,
		"duration", time.Since(start),
		"request_id", id,
		"remote", r.RemoteAddr,
	)
}

// accessLevel is the level of a request's access log line: successful
// reads, the bulk of the traffic, at debug (a line per narinfo costs as
// much as a cached narinfo answer); pushes and failures at info, server
// failures at warn.
func accessLevel(method string, code int) slog.Level {
	switch {
	case code >= 500 && code != statusClientClosed && code != http.StatusNotImplemented:
		return slog.LevelWarn
	case code < 400 && (method == http.MethodGet || method == http.MethodHead):
		return slog.LevelDebug
	default:
		return slog.LevelInfo
	}
}

// notFound answers 404.
func (h *Handler) notFound(w http.ResponseWriter, r *http.Request) {
	writeText(w, http.StatusNotFound, "not found")
}

// putUnsupported answers uploads of anything else: 501, after the same
// authorization as every push (the route table), so the user learns why.
func (h *Handler) putUnsupported(w http.ResponseWriter, r *http.Request) {
	writeText(w, http.StatusNotImplemented, "nixcache does not store "+r.URL.Path+
		": it accepts narinfos, NARs, build logs (log/), NAR listings (.ls), realisations (realisations/) and debug info (debuginfo/)")
}

// unary returns a context bounding one unary upstream call.
func (h *Handler) unary(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, h.RequestTimeout)
}
