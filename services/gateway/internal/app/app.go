// Package app runs the gateway: it connects to the index and signer and
// serves the Nix binary-cache HTTP protocol until its context ends.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"google.golang.org/grpc"

	"github.com/nixcache/nixcache/nix/storepath"
	"github.com/nixcache/nixcache/platform/grpcutil"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	signerv1 "github.com/nixcache/nixcache/proto/nixcache/signer/v1"
	"github.com/nixcache/nixcache/services/gateway/internal/auth"
	"github.com/nixcache/nixcache/services/gateway/internal/httpapi"
)

// Server limits that are not worth a flag.
const (
	readHeaderTimeout = 10 * time.Second
	idleTimeout       = 2 * time.Minute
	maxHeaderBytes    = 64 << 10
)

// Options configures Run.
type Options struct {
	IndexAddr  string // gRPC target of the index
	SignerAddr string // gRPC target of the signer
	StoreDir   string
	Priority   int
	// AuthFile is the token file; "" disables pushing.
	AuthFile            string
	MaxNarinfoSize      int64
	RequestTimeout      time.Duration
	TransferIdleTimeout time.Duration
	ShutdownGrace       time.Duration
	Log                 *slog.Logger
	// DialOptions are added to both gRPC clients' (tests use them).
	DialOptions []grpc.DialOption
}

func (o Options) validate() error {
	switch {
	case o.IndexAddr == "":
		return errors.New("index address is empty")
	case o.SignerAddr == "":
		return errors.New("signer address is empty")
	case o.Priority < 0:
		return fmt.Errorf("priority %d is negative", o.Priority)
	case o.MaxNarinfoSize <= 0:
		return fmt.Errorf("max narinfo size %d is not positive", o.MaxNarinfoSize)
	case o.RequestTimeout <= 0:
		return fmt.Errorf("request timeout %s is not positive", o.RequestTimeout)
	case o.TransferIdleTimeout < 0:
		return fmt.Errorf("transfer idle timeout %s is negative", o.TransferIdleTimeout)
	case o.ShutdownGrace < 0:
		return fmt.Errorf("shutdown grace %s is negative", o.ShutdownGrace)
	case o.Log == nil:
		return errors.New("no logger")
	}
	return storepath.ValidateStoreDir(o.StoreDir)
}

// Run serves the gateway on lis until ctx is done, then shuts down
// gracefully, cutting the requests still running after ShutdownGrace.
func Run(ctx context.Context, o Options, lis net.Listener) error {
	if err := o.validate(); err != nil {
		return fmt.Errorf("gateway options: %w", err)
	}
	policy := auth.Policy{PublicRead: true}
	if o.AuthFile != "" {
		tokens, err := auth.LoadTokens(o.AuthFile)
		if err != nil {
			return fmt.Errorf("auth file: %w", err)
		}
		policy.Tokens = tokens
		o.Log.Info("push tokens loaded", "file", o.AuthFile, "tokens", tokens)
	} else {
		o.Log.Warn("no -auth-file: pushing is disabled")
	}

	indexConn, err := grpcutil.Dial(o.IndexAddr, o.DialOptions...)
	if err != nil {
		return fmt.Errorf("index: %w", err)
	}
	defer indexConn.Close()
	signerConn, err := grpcutil.Dial(o.SignerAddr, o.DialOptions...)
	if err != nil {
		return fmt.Errorf("signer: %w", err)
	}
	defer signerConn.Close()

	handler, err := httpapi.New(httpapi.Config{
		Index:               indexv1.NewIndexServiceClient(indexConn),
		Signer:              signerv1.NewSignerServiceClient(signerConn),
		Auth:                policy,
		Log:                 o.Log,
		StoreDir:            o.StoreDir,
		Priority:            o.Priority,
		MaxNarinfoSize:      o.MaxNarinfoSize,
		RequestTimeout:      o.RequestTimeout,
		TransferIdleTimeout: o.TransferIdleTimeout,
	})
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: readHeaderTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		// No WriteTimeout: it would cut large NARs. Transfers are bounded
		// by TransferIdleTimeout instead.
		ErrorLog: slog.NewLogLogger(o.Log.Handler(), slog.LevelWarn),
	}
	return serve(ctx, srv, lis, o.ShutdownGrace, o.Log)
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
