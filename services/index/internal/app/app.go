// Package app runs the index: it opens the catalogue and the NAR store,
// connects to the signer, and serves IndexService until its context ends.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc"

	"github.com/nixcache/nixcache/nix/storepath"
	"github.com/nixcache/nixcache/platform/grpcutil"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	signerv1 "github.com/nixcache/nixcache/proto/nixcache/signer/v1"
	"github.com/nixcache/nixcache/services/index/internal/catalog"
	"github.com/nixcache/nixcache/services/index/internal/narstore"
	"github.com/nixcache/nixcache/services/index/internal/publish"
	"github.com/nixcache/nixcache/services/index/internal/server"
	"github.com/nixcache/nixcache/services/index/internal/signerclient"
)

// Options configure the index.
type Options struct {
	// DataDir holds catalog.db, nars/ and tmp/.
	DataDir string
	// SignerAddr is the signer's gRPC address.
	SignerAddr string
	// StoreDir is the Nix store directory of the cached paths.
	StoreDir string
	// MaxNarSize bounds an uploaded file and the NAR it decompresses to.
	MaxNarSize uint64
	// SignTimeout bounds each call to the signer.
	SignTimeout time.Duration
	// ShutdownGrace is how long calls in flight may finish at shutdown.
	ShutdownGrace time.Duration
	Log           *slog.Logger
}

// Validate checks the options, naming the flag at fault.
func (o Options) Validate() error {
	var errs []string
	if o.DataDir == "" {
		errs = append(errs, "-data-dir is empty")
	}
	if o.SignerAddr == "" {
		errs = append(errs, "-signer-addr is empty")
	}
	if err := storepath.ValidateStoreDir(o.StoreDir); err != nil {
		errs = append(errs, "-store-dir: "+err.Error())
	}
	if o.MaxNarSize == 0 {
		errs = append(errs, "-max-nar-size must be > 0")
	}
	if o.SignTimeout <= 0 {
		errs = append(errs, "-sign-timeout must be > 0")
	}
	if o.ShutdownGrace < 0 {
		errs = append(errs, "-shutdown-grace must be >= 0")
	}
	if o.Log == nil {
		errs = append(errs, "no logger")
	}
	if len(errs) > 0 {
		return errors.New(strings.Join(errs, "; "))
	}
	return nil
}

// Run serves the index on lis until ctx is done, then stops gracefully and
// closes the catalogue last. lis is closed when Run returns.
func Run(ctx context.Context, o Options, lis net.Listener) (err error) {
	if err := o.Validate(); err != nil {
		lis.Close()
		return err
	}
	if err := os.MkdirAll(o.DataDir, 0o755); err != nil {
		lis.Close()
		return fmt.Errorf("create data directory: %w", err)
	}
	cat, err := catalog.Open(filepath.Join(o.DataDir, "catalog.db"))
	if err != nil {
		lis.Close()
		return err
	}
	defer func() {
		if cerr := cat.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	nars, err := narstore.Open(o.DataDir, o.MaxNarSize)
	if err != nil {
		lis.Close()
		return err
	}
	conn, err := grpcutil.Dial(o.SignerAddr)
	if err != nil {
		lis.Close()
		return fmt.Errorf("signer: %w", err)
	}
	defer conn.Close()

	signer := signerclient.New(signerv1.NewSignerServiceClient(conn))
	pub := publish.New(cat, signer, o.StoreDir, o.SignTimeout)
	// Handlers cut at the end of the grace period still finish before the
	// catalogue closes.
	srv := grpcutil.NewServer(o.Log, grpc.WaitForHandlers(true))
	indexv1.RegisterIndexServiceServer(srv.GRPC, server.New(o.Log, cat, nars, pub))

	o.Log.Info("index serving", "addr", lis.Addr().String(), "data_dir", o.DataDir,
		"signer", o.SignerAddr, "store_dir", o.StoreDir, "max_nar_size", o.MaxNarSize)
	err = srv.Serve(ctx, lis, o.ShutdownGrace)
	o.Log.Info("index stopped")
	return err
}
