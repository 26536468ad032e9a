// Command nixcache-index catalogues Nix store paths and owns their NAR
// files; see internal/app.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nixcache/nixcache/nix/storepath"
	"github.com/nixcache/nixcache/platform/envflag"
	"github.com/nixcache/nixcache/platform/logging"
	"github.com/nixcache/nixcache/services/index/internal/app"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "nixcache-index:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("nixcache-index", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:5011", "gRPC listen address")
	dataDir := fs.String("data-dir", "data/index", "directory of the catalogue (catalog.db) and the NAR files")
	signerAddr := fs.String("signer-addr", "127.0.0.1:5010", "signer gRPC address")
	storeDir := fs.String("store-dir", storepath.DefaultStoreDir, "Nix store directory of the cached paths")
	maxNarSize := fs.Uint64("max-nar-size", 64<<30, "largest NAR file, and largest decompressed NAR, accepted, in bytes")
	signTimeout := fs.Duration("sign-timeout", 10*time.Second, "deadline of each call to the signer")
	logFormat := fs.String("log-format", "json", "log format: json or text")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn or error")
	grace := fs.Duration("shutdown-grace", 30*time.Second, "how long calls in flight may finish at shutdown")
	if err := envflag.Parse(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	log, err := logging.New(os.Stderr, *logFormat, *logLevel)
	if err != nil {
		return err
	}
	opts := app.Options{
		DataDir:       *dataDir,
		SignerAddr:    *signerAddr,
		StoreDir:      *storeDir,
		MaxNarSize:    *maxNarSize,
		SignTimeout:   *signTimeout,
		ShutdownGrace: *grace,
		Log:           log,
	}
	if err := opts.Validate(); err != nil {
		return fmt.Errorf("bad configuration: %w", err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	return app.Run(ctx, opts, lis)
}
