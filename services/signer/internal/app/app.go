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
	signerv1 "github.com/nixcache/nixcache/proto/nixcache/signer/v1"
	"github.com/nixcache/nixcache/services/signer/internal/keyfile"
	"github.com/nixcache/nixcache/services/signer/internal/signer"
)

// Options configure Run.
type Options struct {
	// KeyFiles are the secret key files; every key signs, the first is the
	// primary.
	KeyFiles []string
	// GenerateKey, when set, is the name of a key pair to generate into
	// KeyFiles[0] if that file does not exist yet.
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
}

// Run loads the keys and serves on lis until ctx is done, then stops
// gracefully and returns nil. It returns an error without serving when the
// options or the keys are bad.
func Run(ctx context.Context, opts Options, lis net.Listener) error {
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := opts.validate(); err != nil {
		return err
	}
	if opts.GenerateKey != "" {
		if err := ensureKey(log, opts); err != nil {
			return err
		}
	}
	keys, err := keyfile.Load(opts.KeyFiles)
	if err != nil {
		return err
	}
	if opts.GenerateKey != "" && keys[0].Name != opts.GenerateKey {
		log.Warn("the first key file holds a key with another name than the one to generate; using it",
			"secret_key_file", opts.KeyFiles[0], "key_name", keys[0].Name, "generate_key", opts.GenerateKey)
	}
	svc, err := signer.NewService(keys, opts.StoreDir, opts.MaxBatch)
	if err != nil {
		return err
	}

	srv := grpcutil.NewServer(log)
	signerv1.RegisterSignerServiceServer(srv.GRPC, svc)
	srv.Health.SetServingStatus(signerv1.SignerService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)

	names := make([]string, len(keys))
	for i, k := range keys {
		names[i] = k.Name
	}
	log.Info("signer serving", "addr", lis.Addr().String(), "keys", names,
		"primary_public_key", keys[0].Public().String(), "store_dir", opts.StoreDir, "max_batch", opts.MaxBatch)
	if err := srv.Serve(ctx, lis, opts.ShutdownGrace); err != nil {
		return err
	}
	log.Info("signer stopped")
	return nil
}

func (o Options) validate() error {
	var errs []error
	if len(o.KeyFiles) == 0 {
		errs = append(errs, errors.New("no key files: give at least one with -key-files"))
	}
	if o.MaxBatch < 1 {
		errs = append(errs, fmt.Errorf("max batch %d: want at least 1", o.MaxBatch))
	}
	if o.ShutdownGrace < 0 {
		errs = append(errs, fmt.Errorf("shutdown grace %s: want 0 or more", o.ShutdownGrace))
	}
	return errors.Join(errs...)
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
