// Package app runs the gateway: it connects to the index and serves the
// Nix binary-cache HTTP protocol until its context ends. The gateway, the
// process facing the network, never talks to the signer: it learns the
// public keys from the index.
package app

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"google.golang.org/grpc"

	"github.com/nixcache/nixcache/nix/storepath"
	"github.com/nixcache/nixcache/platform/auth"
	"github.com/nixcache/nixcache/platform/grpcutil"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/gateway/internal/adminapi"
	"github.com/nixcache/nixcache/services/gateway/internal/httpapi"
	"github.com/nixcache/nixcache/services/gateway/internal/landing"
)

// Server limits that are not worth a flag.
const (
	// defaultReadHeaderTimeout is the ReadHeaderTimeout when
	// Options.ReadHeaderTimeout is 0.
	defaultReadHeaderTimeout = 10 * time.Second
	idleTimeout              = 2 * time.Minute
	maxHeaderBytes           = 64 << 10
)

// Options configures Run.
type Options struct {
	IndexAddr string // gRPC target of the index
	StoreDir  string
	Priority  int
	// AuthFile is the gateway's own token file, accepted besides the
	// index's tokens (asked with IndexService.AuthenticateToken); "" for
	// none.
	AuthFile string
	// PrivateRead makes reads need a token with the read scope
	// (-public-read=false).
	PrivateRead         bool
	MaxNarinfoSize      int64
	RequestTimeout      time.Duration
	TransferIdleTimeout time.Duration
	ShutdownGrace       time.Duration
	Log                 *slog.Logger
	// PublicURL is the cache's URL as the landing page shows it; "" uses
	// the scheme and Host of each request.
	PublicURL string
	// UpstreamTLS, when enabled, calls the index over mutual TLS
	// (-grpc-tls-cert, -grpc-tls-key, -grpc-tls-ca).
	UpstreamTLS grpcutil.TLSFiles
	// DialOptions are added to the index client's (tests use them).
	DialOptions []grpc.DialOption

	// ZstdLocal compresses uncompressed NARs with zstd on the fly for
	// clients that accept it (-zstd-local).
	ZstdLocal bool
	// NarRedirect redirects NAR downloads to presigned bucket URLs.
	NarRedirect bool
	// NarinfoCacheTTL bounds how long a narinfo is served from the
	// gateway's cache (0: no cache); see httpapi.Config.
	NarinfoCacheTTL time.Duration
	// NarinfoCacheMaxAge is how long narinfos (and 404s) are cached while
	// the gateway watches the index's changes (0: no watch); see
	// httpapi.Config.
	NarinfoCacheMaxAge time.Duration
	// NarinfoCacheSize bounds the narinfo cache's memory in bytes (0: the
	// default).
	NarinfoCacheSize int64
	// NarDir is the index's nars/ directory when the gateway can read it
	// (-nar-dir, co-located); "" streams every NAR from the index.
	NarDir string
	// LocalStoreDir is the host's store directory when the gateway can
	// read it (-local-store-dir, on the host of an index with
	// -local-store); "" streams the host's NARs from the index.
	LocalStoreDir string
	// UploadSpool is the index's upload spool socket (-upload-spool, on
	// the index's host); "" streams every upload to the index.
	UploadSpool string
	// ReadHeaderTimeout bounds how long a client may take to send a
	// request's headers (slowloris); 0 means 10 s.
	ReadHeaderTimeout time.Duration
}

func (o Options) validate() error {
	switch {
	case o.IndexAddr == "":
		return errors.New("index address is empty")
	case o.Priority < 0:
		return fmt.Errorf("priority %d is negative", o.Priority)
	case o.MaxNarinfoSize <= 0:
		return fmt.Errorf("max narinfo size %d is not positive", o.MaxNarinfoSize)
	case o.ReadHeaderTimeout < 0:
		return fmt.Errorf("read header timeout %s is negative", o.ReadHeaderTimeout)
	case o.RequestTimeout <= 0:
		return fmt.Errorf("request timeout %s is not positive", o.RequestTimeout)
	case o.TransferIdleTimeout < 0:
		return fmt.Errorf("transfer idle timeout %s is negative", o.TransferIdleTimeout)
	case o.NarinfoCacheTTL < 0:
		return fmt.Errorf("narinfo cache TTL %s is negative", o.NarinfoCacheTTL)
	case o.NarinfoCacheMaxAge < 0:
		return fmt.Errorf("narinfo cache max age %s is negative", o.NarinfoCacheMaxAge)
	case o.NarinfoCacheSize < 0:
		return fmt.Errorf("narinfo cache size %d is negative", o.NarinfoCacheSize)
	case o.ShutdownGrace < 0:
		return fmt.Errorf("shutdown grace %s is negative", o.ShutdownGrace)
	case o.Log == nil:
		return errors.New("no logger")
	}
	if o.PublicURL != "" {
		if _, err := landing.ParsePublicURL(o.PublicURL); err != nil {
			return err
		}
	}
	if err := o.UpstreamTLS.Validate(); err != nil {
		return err
	}
	return storepath.ValidateStoreDir(o.StoreDir)
}

// Run serves the gateway on lis until ctx is done, then shuts down
// gracefully, cutting the requests still running after ShutdownGrace.
func Run(ctx context.Context, o Options, lis net.Listener) error {
	if err := o.validate(); err != nil {
		return fmt.Errorf("gateway options: %w", err)
	}
	_, fileTokens, err := auth.LoadPolicy(o.AuthFile, !o.PrivateRead, o.Log)
	if err != nil {
		return err
	}

	handler, closeHandler, err := newHandler(ctx, o, fileTokens)
	if err != nil {
		return err
	}
	defer closeHandler()
	srv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: cmp.Or(o.ReadHeaderTimeout, defaultReadHeaderTimeout),
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		// No WriteTimeout: it would cut large NARs. Transfers are bounded
		// by TransferIdleTimeout instead.
		ErrorLog: slog.NewLogLogger(o.Log.Handler(), slog.LevelWarn),
		// NAR files go out on a corked connection (httpapi/cork.go).
		ConnContext: httpapi.ConnContext,
	}
	return serve(ctx, srv, lis, o.ShutdownGrace, o.Log)
}

// newHandler connects to the index and returns the
// gateway's whole HTTP handler (ops endpoints and metrics around the Nix
// routes), its narinfo cache following the index until ctx ends or the
// returned function is called, which stops that and closes the
// connections. Tokens are those of the index (asked with
// AuthenticateToken) and fileTokens (nil: none).
func newHandler(ctx context.Context, o Options, fileTokens *auth.Tokens) (http.Handler, func(), error) {
	ops := newOps()
	indexCreds, err := o.UpstreamTLS.DialOption(o.IndexAddr, o.Log)
	if err != nil {
		return nil, nil, err
	}
	// The writes carry the pusher's credentials: the index checks the
	// push scope again.
	dialOpts := append(append(ops.dialOptions(), indexCreds), auth.ForwardDialOptions(httpapi.ForwardedMethods...)...)
	indexConn, err := grpcutil.Dial(o.IndexAddr, append(dialOpts, o.DialOptions...)...)
	if err != nil {
		return nil, nil, fmt.Errorf("index: %w", err)
	}
	closeConns := func() { indexConn.Close() }
	index := indexv1.NewIndexServiceClient(indexConn)
	tokens := httpapi.NewIndexTokens(index, fileTokens, o.RequestTimeout)
	for _, c := range tokens.Collectors() {
		ops.reg.MustRegister(c)
	}
	// One policy for the Nix routes and the JSON API: the index's tokens,
	// and the gateway's own file's.
	policy := auth.Policy{PublicRead: !o.PrivateRead, Tokens: tokens}

	adminHandler, err := adminapi.New(adminapi.Config{
		Index:          indexConn,
		RequestTimeout: o.RequestTimeout,
		Log:            o.Log,
		Auth:           policy,
	})
	if err != nil {
		closeConns()
		return nil, nil, err
	}
	landingHandler, err := landing.New(landing.Config{
		Admin:     indexv1.NewAdminServiceClient(indexConn),
		PublicURL: o.PublicURL,
		Timeout:   o.RequestTimeout,
		Log:       o.Log,
	})
	if err != nil {
		closeConns()
		return nil, nil, err
	}
	handler, err := httpapi.New(httpapi.Config{
		Index:               index,
		Auth:                policy,
		Tokens:              tokens,
		Log:                 o.Log,
		StoreDir:            o.StoreDir,
		Priority:            o.Priority,
		MaxNarinfoSize:      o.MaxNarinfoSize,
		RequestTimeout:      o.RequestTimeout,
		TransferIdleTimeout: o.TransferIdleTimeout,
		ZstdLocal:           o.ZstdLocal,
		NarRedirect:         o.NarRedirect,
		NarinfoCacheTTL:     o.NarinfoCacheTTL,
		NarinfoCacheMaxAge:  o.NarinfoCacheMaxAge,
		NarinfoCacheSize:    o.NarinfoCacheSize,
		NarDir:              o.NarDir,
		LocalStoreDir:       o.LocalStoreDir,
		UploadSpool:         o.UploadSpool,
		Landing:             landingHandler,
		Admin:               adminHandler,
	})
	if err != nil {
		closeConns()
		return nil, nil, err
	}
	ops.registerNarinfoCache(handler.NarinfoCacheStats)
	// The narinfo cache follows the index's changes until the gateway
	// stops.
	watchCtx, stopWatch := context.WithCancel(ctx)
	watched := make(chan struct{})
	go func() { defer close(watched); handler.WatchIndex(watchCtx) }()
	// Downloads served from -nar-dir are reported to the index until the
	// HTTP server has stopped (closeAll), the last of them then.
	reportCtx, stopReports := context.WithCancel(context.WithoutCancel(ctx))
	reported := make(chan struct{})
	go func() { defer close(reported); handler.ReportDownloads(reportCtx) }()
	closeAll := func() {
		stopWatch()
		stopReports()
		<-watched
		<-reported
		closeConns()
	}
	return ops.handler(handler, dependency{"index", indexConn}), closeAll, nil
}

// serve runs srv on lis until ctx is done, then shuts it down.
func serve(ctx context.Context, srv *http.Server, lis net.Listener, grace time.Duration, log *slog.Logger) error {
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	log.Info("gateway listening", "addr", lis.Addr().String())
	select {
	case err := <-errc:
		return fmt.Errorf("http serve %s: %w", lis.Addr(), err)
	case <-ctx.Done():
	}
	log.Info("shutting down", "grace", grace)
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), grace)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		log.Warn("graceful shutdown timed out, closing remaining connections", "err", err)
		srv.Close()
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("http serve %s: %w", lis.Addr(), err)
	}
	return nil
}
