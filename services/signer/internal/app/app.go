// Package app is the nixcache-signer program: it loads the secret keys and
// serves nixcache.signer.v1.SignerService over gRPC.
package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/nixcache/nixcache/platform/grpcutil"
	"github.com/nixcache/nixcache/platform/metrics"
	signerv1 "github.com/nixcache/nixcache/proto/nixcache/signer/v1"
	"github.com/nixcache/nixcache/services/signer/internal/keyfile"
	"github.com/nixcache/nixcache/services/signer/internal/keyring"
	"github.com/nixcache/nixcache/services/signer/internal/signer"
)

// Options configure Run.
type Options struct {
	// KeyFiles are the secret key files; every key signs (unless retired),
	// the first is the primary. They are never written to.
	KeyFiles []string
	// KeyDir is the key directory: keys made by GenerateKey live there, and
	// the list of retired keys. "" disables GenerateKey and RetireKey.
	KeyDir string
	// GenerateKey, when set, is the name of a key pair to generate into
	// KeyFiles[0] if that file does not exist yet or, without KeyFiles,
	// into KeyDir if it holds no active key.
	GenerateKey string
	// StoreDir is the Nix store directory fingerprints must name.
	StoreDir string
	// MaxBatch is the most fingerprints one Sign call may carry.
	MaxBatch int
	// ShutdownGrace bounds how long in-flight calls may finish after ctx is
	// done.
	ShutdownGrace time.Duration
	// Log receives the program's logs; nil discards them.
	Log *slog.Logger
	// Notices receives messages for the person who started the program,
	// such as a newly generated public key; nil discards them.
	Notices io.Writer
	// TLS, when enabled, serves gRPC over mutual TLS only (-tls-cert,
	// -tls-key, -tls-client-ca).
	TLS grpcutil.TLSFiles
	// MetricsListener, when set, serves /metrics and /healthz over HTTP;
	// Run closes it when it returns.
	MetricsListener net.Listener
}

// metricsShutdownGrace bounds how long a scrape may finish at shutdown.
const metricsShutdownGrace = 2 * time.Second

// Run loads the keys and serves on lis until ctx is done, then stops
// gracefully and returns nil. It returns an error without serving when the
// options or the keys are bad.
func Run(ctx context.Context, opts Options, lis net.Listener) error {
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.MetricsListener != nil {
		defer opts.MetricsListener.Close()
	}
	if err := opts.validate(); err != nil {
		return err
	}
	tlsOpts, err := opts.TLS.ServerOptions(log)
	if err != nil {
		return err
	}
	if opts.GenerateKey != "" && len(opts.KeyFiles) > 0 {
		if err := ensureKey(log, opts); err != nil {
			return err
		}
	}
	ring, err := keyring.Open(keyring.Config{KeyFiles: opts.KeyFiles, Dir: opts.KeyDir, Log: log})
	if err != nil {
		return err
	}
	if active, _ := ring.Counts(); opts.GenerateKey != "" && len(opts.KeyFiles) == 0 && active == 0 {
		if err := generateInKeyDir(log, opts, ring); err != nil {
			return err
		}
	}
	keys := ring.Active()
	if len(keys) == 0 {
		return errors.New("no active key: give -key-files, or -generate-key NAME to make one in -key-dir")
	}
	if opts.GenerateKey != "" && keys[0].Name != opts.GenerateKey {
		log.Warn("the primary key has another name than the one to generate; using it",
			"key_name", keys[0].Name, "generate_key", opts.GenerateKey)
	}
	reg := metrics.NewRegistry()
	svc, err := signer.New(signer.Config{
		Ring:     ring,
		StoreDir: opts.StoreDir,
		MaxBatch: opts.MaxBatch,
		Metrics:  metrics.NewSigner(reg, ring.Counts),
		Log:      log,
	})
	if err != nil {
		return err
	}

	srv := grpcutil.NewServer(log, append(metrics.NewGRPCServer(reg).ServerOptions(), tlsOpts...)...)
	signerv1.RegisterSignerServiceServer(srv.GRPC, svc)
	srv.Health.SetServingStatus(signerv1.SignerService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	if opts.MetricsListener != nil {
		ms := metrics.Start(opts.MetricsListener, metrics.OpsHandler(reg, metrics.GRPCHealthz(srv.Health)), log)
		defer func() {
			if err := ms.Shutdown(metricsShutdownGrace); err != nil {
				log.Warn("metrics server", "err", err)
			}
		}()
	}

	var names, retired []string
	for _, k := range ring.List() {
		if k.Active {
			names = append(names, k.Public.Name)
		} else {
			retired = append(retired, k.Public.Name)
		}
	}
	log.Info("signer serving", "addr", lis.Addr().String(), "keys", names, "retired_keys", retired,
		"primary_public_key", keys[0].Public().String(), "key_dir", opts.KeyDir,
		"store_dir", opts.StoreDir, "max_batch", opts.MaxBatch, "mutual_tls", opts.TLS.Enabled())
	if err := srv.Serve(ctx, lis, opts.ShutdownGrace); err != nil {
		return err
	}
	log.Info("signer stopped")
	return nil
}

func (o Options) validate() error {
	var errs []error
	if len(o.KeyFiles) == 0 && o.KeyDir == "" {
		errs = append(errs, errors.New("no key files: give at least one with -key-files, or a -key-dir"))
	}
	if o.MaxBatch < 1 {
		errs = append(errs, fmt.Errorf("max batch %d: want at least 1", o.MaxBatch))
	}
	if o.ShutdownGrace < 0 {
		errs = append(errs, fmt.Errorf("shutdown grace %s: want 0 or more", o.ShutdownGrace))
	}
	return errors.Join(errs...)
}

// generateInKeyDir generates the key opts.GenerateKey in the key directory,
// and tells the operator its public key.
func generateInKeyDir(log *slog.Logger, opts Options, ring *keyring.Ring) error {
	info, err := ring.Generate(opts.GenerateKey)
	if err != nil {
		return err
	}
	pub := info.Public
	log.Info("generated a new signing key", "secret_key_file", info.File, "public_key", pub.String())
	if opts.Notices != nil {
		fmt.Fprintf(opts.Notices, "Generated signing key %q in %s.\nAdd its public key to the trusted-public-keys of every Nix client:\n\n    %s\n\n(also written to %s)\n",
			pub.Name, info.File, pub.String(), keyfile.PublicPath(info.File))
	}
	return nil
}

// ensureKey generates the key pair opts.GenerateKey into the first key file
// when that file does not exist, and tells the operator its public key.
func ensureKey(log *slog.Logger, opts Options) error {
	path := opts.KeyFiles[0]
	pub, created, err := keyfile.Ensure(path, opts.GenerateKey)
	if err != nil {
		return err
	}
	if !created {
		return nil
	}
	log.Info("generated a new signing key", "secret_key_file", path,
		"public_key_file", keyfile.PublicPath(path), "public_key", pub.String())
	if opts.Notices != nil {
		fmt.Fprintf(opts.Notices, "Generated signing key %q in %s.\nAdd its public key to the trusted-public-keys of every Nix client:\n\n    %s\n\n(also written to %s)\n",
			pub.Name, path, pub.String(), keyfile.PublicPath(path))
	}
	return nil
}
