// Package app runs the index: it opens the catalogue and the NAR store,
// connects to the signer (and, with LocalStore, to the Nix daemon of the
// host's store it then serves too), and serves IndexService until its
// context ends.
package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/nixcache/nixcache/nix/daemon"
	"github.com/nixcache/nixcache/nix/signature"
	"github.com/nixcache/nixcache/nix/storepath"
	"github.com/nixcache/nixcache/platform/grpcutil"
	"github.com/nixcache/nixcache/platform/metrics"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	signerv1 "github.com/nixcache/nixcache/proto/nixcache/signer/v1"
	"github.com/nixcache/nixcache/services/index/internal/admin"
	"github.com/nixcache/nixcache/services/index/internal/artifact"
	"github.com/nixcache/nixcache/services/index/internal/catalog"
	"github.com/nixcache/nixcache/services/index/internal/hostnar"
	"github.com/nixcache/nixcache/services/index/internal/localstore"
	"github.com/nixcache/nixcache/services/index/internal/narstore"
	"github.com/nixcache/nixcache/services/index/internal/publish"
	"github.com/nixcache/nixcache/services/index/internal/server"
	"github.com/nixcache/nixcache/services/index/internal/signerclient"
	"github.com/nixcache/nixcache/services/index/internal/spool"
	"github.com/nixcache/nixcache/services/index/internal/tokens"
	"github.com/nixcache/nixcache/services/index/internal/upstream"
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
	// NarLimits bound the decompression of an upload (a bomb).
	NarLimits narstore.Limits
	// MaxUploads bounds the uploads received at once (0: no bound).
	MaxUploads int
	// TrustedSigKeys are the public keys ("name:base64") whose
	// signatures in a pushed narinfo are kept (publish.WithTrustedKeys).
	TrustedSigKeys []string
	// SignTimeout bounds each call to the signer.
	SignTimeout time.Duration
	// ShutdownGrace is how long calls in flight may finish at shutdown.
	ShutdownGrace time.Duration
	Log           *slog.Logger

	// AuthFile is the token file (platform/auth); "" disables the admin
	// RPCs that need a token.
	AuthFile string
	// PrivateRead makes the read-scoped admin RPCs (GetStats, ListKeys)
	// need a token (-public-read=false); it needs an AuthFile.
	PrivateRead bool
	// MetricsListener, when set, serves /metrics and /healthz.
	MetricsListener net.Listener
	// SpoolListener, when set, is a Unix socket's listener where
	// co-located gateways are handed files to spool NAR uploads into
	// (package spool; PutNar's spool_id).
	SpoolListener net.Listener

	// LocalStore serves the host's Nix store (StoreDir, which must be
	// readable) beside the pushed paths, as nix-serve does.
	LocalStore bool
	// NixDaemonSocket is the Nix daemon's socket (LocalStore only).
	NixDaemonSocket string
	// NixDB is Nix's database, watched for changes (LocalStore only).
	NixDB string
	// NixLogDir is the host's build-log directory (LocalStore only; ""
	// for none).
	NixLogDir string
	// LocalSyncInterval is how often the store is checked for changes.
	LocalSyncInterval time.Duration
	// HostNarMaxSize is the byte budget of the compressed copies of the
	// host paths' NARs (package hostnar, LocalStore only); 0 makes none.
	HostNarMaxSize uint64
	// HostNarCompression is their compression, one of
	// hostnar.Compressions ("": hostnar.DefaultCompression).
	HostNarCompression string
	// HostNarLevel is their zstd level, 1 to 22 (0: hostnar.DefaultLevel).
	HostNarLevel int
	// HostNarAhead copies every host path when it is catalogued, not only
	// after its first download.
	HostNarAhead bool

	// GCMaxSize and GCMaxAge are the default retention policies of
	// garbage collection (0: none); GCInterval, when > 0, runs it that
	// often.
	GCMaxSize  uint64
	GCMaxAge   time.Duration
	GCInterval time.Duration

	// TLS, when enabled, serves gRPC over mutual TLS only (-tls-cert,
	// -tls-key, -tls-client-ca); SignerTLS calls the signer over it
	// (-grpc-tls-cert, -grpc-tls-key, -grpc-tls-ca).
	TLS       grpcutil.TLSFiles
	SignerTLS grpcutil.TLSFiles

	// Upstreams are the upstream caches a path the index lacks is
	// fetched from, in order (package upstream); UpstreamKeys the trusted
	// public keys ("name:base64") one of whose signatures it must carry.
	Upstreams    []string
	UpstreamKeys []string
	// UpstreamTimeout bounds connecting, each narinfo lookup and any
	// silence of an upstream; UpstreamNegativeTTL is how long a path no
	// upstream has, or an unreachable upstream, is not asked again;
	// UpstreamFetchTimeout bounds fetching one path with its closure.
	UpstreamTimeout      time.Duration
	UpstreamNegativeTTL  time.Duration
	UpstreamFetchTimeout time.Duration

	// NarBackend is where the NAR files are kept: "disk" (DataDir/nars,
	// also for "") or "s3" (Bucket).
	NarBackend string
	// Bucket configures the bucket of -nar-backend=s3.
	Bucket narstore.BucketConfig
	// PresignExpiry is how long the presigned URLs of a bucket's files
	// work (0: none are made).
	PresignExpiry time.Duration
}

// The NAR backends.
const (
	BackendDisk = "disk"
	BackendS3   = "s3"
)

// bucketTimeout bounds the check of the bucket at startup.
const bucketTimeout = 30 * time.Second

// maxPresignExpiry is the longest validity S3's signatures allow.
const maxPresignExpiry = 7 * 24 * time.Hour

// accessFlushInterval is how often the NAR downloads noted in memory are
// written to the catalogue (and once more at shutdown).
const accessFlushInterval = 5 * time.Second

// localDaemonConns is the most connections (daemon processes) the index
// keeps to the Nix daemon.
const localDaemonConns = 4

// daemonDialTimeout bounds the handshake with the daemon at startup.
const daemonDialTimeout = 10 * time.Second

// parseKeys parses the public keys of -trusted-sig-keys and -upstream-key.
func parseKeys(trusted, upstream []string) ([]signature.PublicKey, error) {
	var keys []signature.PublicKey
	for _, list := range []struct {
		flag string
		keys []string
	}{{"-trusted-sig-keys", trusted}, {"-upstream-key", upstream}} {
		for _, k := range list.keys {
			pk, err := signature.ParsePublicKey(k)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", list.flag, err)
			}
			keys = append(keys, pk)
		}
	}
	return keys, nil
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
	if o.LocalStore {
		if o.NixDaemonSocket == "" {
			errs = append(errs, "-nix-daemon-socket is empty")
		}
		if o.NixDB == "" {
			errs = append(errs, "-nix-db is empty")
		}
		if o.LocalSyncInterval <= 0 {
			errs = append(errs, "-local-sync-interval must be > 0")
		}
		if o.HostNarLevel < 0 || o.HostNarLevel > 22 {
			errs = append(errs, "-host-nar-level must be between 1 and 22")
		}
		if o.HostNarCompression != "" && !slices.Contains(hostnar.Compressions, o.HostNarCompression) {
			errs = append(errs, fmt.Sprintf("-host-nar-compression %q: want one of %s", o.HostNarCompression, strings.Join(hostnar.Compressions, ", ")))
		}
	}
	if o.GCMaxAge < 0 {
		errs = append(errs, "-gc-max-age must be >= 0")
	}
	if o.GCInterval < 0 {
		errs = append(errs, "-gc-interval must be >= 0")
	}
	for _, f := range []grpcutil.TLSFiles{o.TLS, o.SignerTLS} {
		if err := f.Validate(); err != nil {
			errs = append(errs, err.Error())
		}
	}

	if len(o.Upstreams) > 0 || len(o.UpstreamKeys) > 0 {
		if _, err := o.upstreamConfig(); err != nil {
			errs = append(errs, err.Error())
		}
	}
	switch o.NarBackend {
	case "", BackendDisk:
	case BackendS3:
		if o.Bucket.Bucket == "" {
			errs = append(errs, "-nar-backend=s3 needs -s3-bucket")
		}
		if o.Bucket.PartSize != 0 && o.Bucket.PartSize < narstore.MinPartSize {
			errs = append(errs, fmt.Sprintf("-s3-part-size must be at least %d (5 MiB)", narstore.MinPartSize))
		}
	default:
		errs = append(errs, fmt.Sprintf("-nar-backend %q: want disk or s3", o.NarBackend))
	}
	if o.PresignExpiry < 0 || o.PresignExpiry > maxPresignExpiry {
		errs = append(errs, "-s3-presign-expiry must be between 0 and 168h (S3's limit)")
	}
	if len(errs) > 0 {
		return errors.New(strings.Join(errs, "; "))
	}
	return nil
}

// Run serves the index on lis until ctx is done, then stops gracefully and
// closes the catalogue after everything that uses it. lis is closed when
// Run returns.
//
// It opens what the index owns (open), wires the services over it (wire)
// and serves (serve); one deferred close undoes, in reverse, exactly what
// was done, whichever step failed.
func Run(ctx context.Context, o Options, lis net.Listener) (err error) {
	x := &index{o: o, lis: lis}
	// Closed last; after Serve, which closes it too, the error is moot.
	x.onClose(func() error { _ = lis.Close(); return nil })
	defer func() {
		if cerr := x.close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	if err := o.Validate(); err != nil {
		return err
	}
	if err := x.open(ctx); err != nil {
		return err
	}
	if err := x.wire(ctx); err != nil {
		return err
	}
	return x.serve(ctx)
}

// index is what Run opens and wires.
type index struct {
	o   Options
	lis net.Listener

	// Opened by open.
	cat       *catalog.Catalog
	nars      *narstore.Store
	artifacts *artifact.Store
	ops       *ops
	tlsOpts   []grpc.ServerOption
	conn      *grpc.ClientConn
	pub       *publish.Publisher
	local     server.LocalStore // nil without LocalStore
	copies    *hostnar.Store    // nil without LocalStore or a budget
	puller    *upstream.Puller  // nil without upstreams

	// Made by wire.
	srv        *grpcutil.Server
	tracker    *admin.Tracker
	tokenStore *tokens.Store
	adminSvc   *admin.Service
	logDir     string

	// undo holds what close undoes, last first.
	undo []func() error
}

// onClose has close run f, before whatever was registered earlier.
func (x *index) onClose(f func() error) { x.undo = append(x.undo, f) }

// close undoes what open, wire and serve did, in reverse, and returns
// their errors (in practice the catalogue's, closed last).
func (x *index) close() error {
	var errs []error
	for i := len(x.undo) - 1; i >= 0; i-- {
		errs = append(errs, x.undo[i]())
	}
	x.undo = nil
	return errors.Join(errs...)
}

// open opens what the index owns: the catalogue, the NAR and side-file
// stores (checked against each other), the metrics and token file, the
// signer connection, the host's store with its daemon and the upstreams.
func (x *index) open(ctx context.Context) error {
	o := x.o
	if err := os.MkdirAll(o.DataDir, 0o755); err != nil {
		return fmt.Errorf("create data directory: %w", err)
	}
	cat, err := catalog.Open(filepath.Join(o.DataDir, "catalog.db"))
	if err != nil {
		return err
	}
	x.cat = cat
	x.onClose(cat.Close)
	var files narstore.Backend // nil: DataDir/nars
	if o.NarBackend == BackendS3 {
		bctx, cancel := context.WithTimeout(ctx, bucketTimeout)
		bucket, err := narstore.OpenBucket(bctx, o.Bucket)
		cancel()
		if err != nil {
			return fmt.Errorf("-nar-backend=s3: %w", err)
		}
		files = bucket
	}
	if x.nars, err = narstore.OpenWith(o.DataDir, o.MaxNarSize, files); err != nil {
		return err
	}
	x.nars.WithLimits(o.NarLimits)
	if x.artifacts, err = artifact.Open(o.DataDir); err != nil {
		return err
	}
	// Before anything is served: the catalogue and the files agree.
	leftovers := x.nars.LeftoverUploads() + x.artifacts.LeftoverUploads()
	report, err := startupCheck(ctx, o.Log, cat, x.nars, leftovers)
	if err != nil {
		return err
	}
	if x.ops, err = newOps(o); err != nil {
		return err
	}
	if err := registerStartupCheck(x.ops.registry, report, leftovers); err != nil {
		return err
	}
	signerCreds, err := o.SignerTLS.DialOption(o.SignerAddr, o.Log)
	if err != nil {
		return err
	}
	if x.tlsOpts, err = o.TLS.ServerOptions(o.Log); err != nil {
		return err
	}
	x.conn, err = grpcutil.Dial(o.SignerAddr, append(x.ops.dialOptions(), signerCreds)...)
	if err != nil {
		return fmt.Errorf("signer: %w", err)
	}
	x.onClose(func() error { _ = x.conn.Close(); return nil })

	signer := signerclient.New(signerv1.NewSignerServiceClient(x.conn))
	// The upstreams' keys are trusted too: the signatures of a path
	// fetched from one are kept beside ours.
	trusted, err := parseKeys(o.TrustedSigKeys, o.UpstreamKeys)
	if err != nil {
		return err
	}
	x.pub = publish.New(cat, signer, o.StoreDir, o.SignTimeout).WithTrustedKeys(trusted, o.Log)
	if o.LocalStore {
		if err := x.openLocal(ctx, signer); err != nil {
			return err
		}
	} else {
		// Paths of a store served before must not linger, nor copies of
		// their NARs.
		quarantined, err := cat.ClearLocal()
		if err == nil {
			err = os.RemoveAll(hostNarDir(o))
		}
		if err != nil {
			return err
		}
		if len(quarantined) > 0 {
			o.Log.Warn("quarantined pushed paths that refer to paths of the host's store, no longer served; push them again",
				"paths", quarantined)
		}
	}
	if len(o.Upstreams) > 0 {
		if x.puller, err = openUpstream(o, x.ops, cat, x.nars, x.pub); err != nil {
			return err
		}
		// Fetches in progress end before the catalogue closes.
		x.onClose(func() error { x.puller.Close(); return nil })
	}
	return nil
}

// openLocal opens the host's store and the compressed copies of its
// NARs, and runs their background work until close.
func (x *index) openLocal(ctx context.Context, signer *signerclient.Client) error {
	store, pool, err := openLocal(ctx, x.o, x.cat, signer)
	if err != nil {
		return err
	}
	x.onClose(func() error { _ = pool.Close(); return nil })
	if x.copies, err = openHostNars(x.o, x.cat); err != nil {
		return err
	}
	if x.copies != nil {
		store.WithCopies(x.copies)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{}, 2)
	go func() {
		defer func() { done <- struct{}{} }()
		store.Run(runCtx)
	}()
	go func() {
		defer func() { done <- struct{}{} }()
		if x.copies != nil {
			x.copies.Run(runCtx)
		}
	}()
	// Stopped before the catalogue closes.
	x.onClose(func() error { stop(); <-done; <-done; return nil })
	x.local = store
	// Pushed paths keep their own copies of the host paths they refer to.
	x.pub.WithHost(store, x.nars)
	return nil
}

// wire makes the gRPC server and registers the services and their
// metrics on it.
func (x *index) wire(ctx context.Context) error {
	o, cat := x.o, x.cat
	// Handlers cut at the end of the grace period still finish before the
	// catalogue closes.
	x.tracker = admin.NewTracker(cat, o.Log.With("component", "admin"))
	x.tokenStore = tokens.New(cat, x.ops.fileTokens, o.Log.With("component", "tokens"))
	x.ops.policy.Tokens = x.tokenStore
	for _, c := range x.tokenStore.Collectors() {
		if err := x.ops.registry.Register(c); err != nil {
			return fmt.Errorf("token metrics: %w", err)
		}
	}
	srvOpts := append(append(x.ops.serverOptions(), x.tracker.Interceptors()...), x.tlsOpts...)
	srvOpts = append(srvOpts, server.Codec())
	x.srv = grpcutil.NewServer(o.Log, append(srvOpts, grpc.WaitForHandlers(true))...)
	stopMetrics := x.ops.serveMetrics(o.MetricsListener, x.srv.Health, o)
	x.onClose(func() error { stopMetrics(); return nil })
	if o.LocalStore {
		x.logDir = o.NixLogDir
	}
	indexSvc := server.New(o.Log, cat, x.nars, x.pub, x.local).WithArtifacts(x.artifacts, x.logDir).WithPresign(o.PresignExpiry).
		WithDownloads(x.tracker).WithUploadLimit(o.MaxUploads).WithTokens(x.tokenStore)
	if x.copies != nil {
		indexSvc.WithHostCopies(x.copies)
		if err := x.ops.registry.Register(hostNarCollector{x.copies, o.HostNarMaxSize}); err != nil {
			return fmt.Errorf("host NAR metrics: %w", err)
		}
	}
	if x.puller != nil {
		indexSvc.WithUpstream(x.puller)
	}
	if err := x.serveSpool(indexSvc); err != nil {
		return err
	}
	indexv1.RegisterIndexServiceServer(x.srv.GRPC, indexSvc)
	x.adminSvc = admin.New(admin.Config{StoreDir: o.StoreDir, SignTimeout: o.SignTimeout,
		GCMaxSize: o.GCMaxSize, GCMaxAge: o.GCMaxAge, Log: o.Log.With("component", "admin")},
		cat, x.nars, signerv1.NewSignerServiceClient(x.conn), x.tracker).WithPathChecker(indexSvc).WithTokens(x.tokenStore)
	indexv1.RegisterAdminServiceServer(x.srv.GRPC, x.adminSvc)
	if err := metrics.RegisterCatalog(x.ops.registry, x.adminSvc.CatalogStats); err != nil {
		return fmt.Errorf("catalogue metrics: %w", err)
	}
	if err := x.ops.registry.Register(watchCollector{cat.Changes()}); err != nil {
		return fmt.Errorf("watch metrics: %w", err)
	}
	// WatchPaths streams never end by themselves: they are ended when the
	// shutdown begins, or the graceful stop would wait for them.
	stopWatch := context.AfterFunc(ctx, cat.Changes().Close)
	x.onClose(func() error { stopWatch(); return nil })
	return nil
}

// serveSpool hands out spool files on o.SpoolListener, if any, for
// indexSvc's PutNar to take; without file leases (narstore.SpoolSupported)
// it offers none, and gateways stream their uploads.
func (x *index) serveSpool(indexSvc *server.Server) error {
	lis := x.o.SpoolListener
	if lis == nil {
		return nil
	}
	log := x.o.Log.With("component", "spool")
	if err := x.nars.SpoolSupported(); err != nil {
		log.Warn("no upload spool: gateways stream their uploads", "err", err)
		_ = lis.Close()
		return nil
	}
	// The uploads are bounded as streams are, by PutNar's slots (each
	// spooled upload's call is in flight while its body is written);
	// the files handed out at once, by twice that: a file's slot comes
	// back only once its gateway has hung up, after the answer.
	maxFiles := x.o.MaxUploads
	if maxFiles <= 0 {
		maxFiles = server.DefaultMaxUploads
	}
	sp := spool.New(log, x.nars.SpoolFile, narstore.Discard, x.nars.MaxSize(), 2*maxFiles)
	indexSvc.WithSpool(sp)
	if err := x.ops.registry.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "nixcache_upload_spool_files",
		Help: "Files handed to gateways on the upload spool socket (-upload-spool) that no PutNar has claimed yet.",
	}, func() float64 { return float64(sp.Outstanding()) })); err != nil {
		return fmt.Errorf("spool metrics: %w", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := sp.Serve(lis); err != nil {
			log.Error("upload spool stopped", "err", err)
		}
	}()
	log.Info("upload spool serving", "addr", lis.Addr().String())
	x.onClose(func() error {
		sp.Close()
		_ = lis.Close()
		<-done
		return nil
	})
	return nil
}

// serve runs the background work and serves until ctx is done.
func (x *index) serve(ctx context.Context) error {
	o := x.o
	// The last downloads are written, and a collection stops, after the
	// server stopped and before the catalogue closes.
	bgCtx, stopBg := context.WithCancel(context.WithoutCancel(ctx))
	bgDone := make(chan struct{}, 3)
	go func() { x.tracker.Run(bgCtx, accessFlushInterval); bgDone <- struct{}{} }()
	go func() { x.tokenStore.Run(bgCtx, tokens.DefaultFlushInterval); bgDone <- struct{}{} }()
	bgs := 2
	if o.GCInterval > 0 {
		bgs++
		go func() { x.adminSvc.RunGC(ctx, o.GCInterval); bgDone <- struct{}{} }()
	}
	x.onClose(func() error {
		stopBg()
		for range bgs {
			<-bgDone
		}
		return nil
	})

	o.Log.Info("index serving", "addr", x.lis.Addr().String(), "data_dir", o.DataDir,
		"signer", o.SignerAddr, "store_dir", o.StoreDir, "max_nar_size", o.MaxNarSize,
		"nar_files", x.nars.Backend().String(), "local_store", o.LocalStore, "nix_log_dir", x.logDir, "gc_max_size", o.GCMaxSize, "gc_max_age", o.GCMaxAge, "gc_interval", o.GCInterval,
		"mutual_tls", o.TLS.Enabled(), "signer_mutual_tls", o.SignerTLS.Enabled())
	err := x.srv.Serve(ctx, x.lis, o.ShutdownGrace)
	o.Log.Info("index stopped")
	return err
}

// hostNarDir is the directory of the compressed copies of host paths'
// NARs: inside nars/, so that a co-located gateway's -nar-dir covers it.
func hostNarDir(o Options) string { return filepath.Join(o.DataDir, "nars", "host") }

// openHostNars opens the compressed copies of the host paths' NARs, or,
// with a budget of 0, forgets and removes any kept before (nil, nil).
func openHostNars(o Options, cat *catalog.Catalog) (*hostnar.Store, error) {
	dir := hostNarDir(o)
	if o.HostNarMaxSize == 0 {
		recs, err := cat.HostNars()
		if err != nil {
			return nil, err
		}
		hashes := make([]string, len(recs))
		for i, r := range recs {
			hashes[i] = r.HashPart
		}
		if _, err := cat.DropHostNars(hashes, false); err != nil {
			return nil, err
		}
		if err := os.RemoveAll(dir); err != nil {
			return nil, fmt.Errorf("remove host NAR copies: %w", err)
		}
		return nil, nil
	}
	copies, rep, err := hostnar.Open(hostnar.Config{
		Dir:         dir,
		StoreDir:    o.StoreDir,
		Compression: o.HostNarCompression,
		Level:       o.HostNarLevel,
		MaxBytes:    o.HostNarMaxSize,
		Ahead:       o.HostNarAhead,
		Log:         o.Log.With("component", "hostnar"),
	}, cat)
	if err != nil {
		return nil, err
	}
	level := slog.LevelInfo
	if rep.DroppedRecords+rep.RemovedFiles+rep.Leftovers > 0 {
		level = slog.LevelWarn
	}
	u := copies.Usage()
	o.Log.Log(context.Background(), level, "compressed copies of host NARs checked", "dir", dir, "kept", rep.Kept, "bytes", u.Bytes,
		"budget", o.HostNarMaxSize, "compression", o.HostNarCompression, "level", o.HostNarLevel, "ahead", o.HostNarAhead,
		"dropped_records", rep.DroppedRecords, "recompressed", rep.Recompressed, "removed_files", rep.RemovedFiles, "unfinished_removed", rep.Leftovers)
	return copies, nil
}

// openLocal checks that the host's store can be served, the store
// directory readable and the daemon answering, and returns the local store
// over a pool of daemon connections, which the caller closes.
func openLocal(ctx context.Context, o Options, cat *catalog.Catalog, signer *signerclient.Client) (*localstore.Store, *daemon.Pool, error) {
	d, err := os.Open(o.StoreDir)
	if err == nil {
		_, err = d.Readdirnames(1)
		d.Close()
		if err == io.EOF {
			err = nil
		}
	}
	if err != nil {
		return nil, nil, fmt.Errorf("-local-store: the store directory (-store-dir) must be a readable directory: %w", err)
	}
	pool, err := daemon.NewPool(o.NixDaemonSocket, localDaemonConns, daemon.WithStoreDir(o.StoreDir))
	if err != nil {
		return nil, nil, fmt.Errorf("-local-store: %w", err)
	}
	dialCtx, cancel := context.WithTimeout(ctx, daemonDialTimeout)
	defer cancel()
	if err := pool.Do(dialCtx, func(*daemon.Conn) error { return nil }); err != nil {
		pool.Close()
		return nil, nil, fmt.Errorf("-local-store: the Nix daemon (-nix-daemon-socket) does not answer: %w", err)
	}
	if _, err := os.Stat(o.NixDB); err != nil {
		o.Log.Warn("Nix database not found: new and deleted store paths are noticed only by lookups and the periodic full sync",
			"nix_db", o.NixDB, "err", err)
	}
	store := localstore.New(localstore.Config{
		StoreDir:     o.StoreDir,
		NixDB:        o.NixDB,
		SyncInterval: o.LocalSyncInterval,
		SignTimeout:  o.SignTimeout,
		Log:          o.Log.With("component", "localstore"),
	}, cat, localstore.PoolDaemon{Pool: pool}, signer)
	o.Log.Info("serving the host's Nix store", "store_dir", o.StoreDir, "nix_daemon_socket", o.NixDaemonSocket,
		"nix_db", o.NixDB, "sync_interval", o.LocalSyncInterval)
	return store, pool, nil
}
