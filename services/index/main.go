// Command nixcache-index catalogues Nix store paths and owns their NAR
// files; see internal/app.
package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/nixcache/nixcache/nix/storepath"
	"github.com/nixcache/nixcache/platform/envflag"
	"github.com/nixcache/nixcache/platform/grpcutil"
	"github.com/nixcache/nixcache/platform/healthcheck"
	"github.com/nixcache/nixcache/platform/program"
	"github.com/nixcache/nixcache/services/index/internal/app"
	"github.com/nixcache/nixcache/services/index/internal/hostnar"
	"github.com/nixcache/nixcache/services/index/internal/narstore"
	"github.com/nixcache/nixcache/services/index/internal/server"

	// The CA roots of the upstream caches (-upstream https://...) when the
	// system has none, as in the FROM scratch image: Go's x509 uses them
	// only then, so SSL_CERT_FILE and SSL_CERT_DIR still choose others.
	_ "golang.org/x/crypto/x509roots/fallback"
)

const (
	name = "nixcache-index"
	// defaultListen is a Unix socket in the data directory, which only
	// the services' user can reach.
	defaultListen = "unix:data/index.sock"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

// run is the program; it returns the exit code: 0, 1 when it failed, 2 on
// bad usage (platform/program).
func run(args []string, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "healthcheck":
			return healthcheck.GRPCMain(name, defaultListen, args[1:], stderr)
		case "check":
			return program.Exit(name+" check", runCheck(args[1:], os.Stdout, stderr), stderr)
		case "backup":
			return program.Exit(name+" backup", runBackup(args[1:], os.Stdout, stderr), stderr)
		}
	}
	return program.Exit(name, serve(args, stderr), stderr)
}

func serve(args []string, stderr io.Writer) error {
	fs := program.FlagSet(name, stderr)
	listen := grpcutil.ListenFlags(fs, defaultListen)
	dataDir := fs.String("data-dir", "data/index", "directory of the catalogue (catalog.db) and the NAR files")
	signerAddr := fs.String("signer-addr", "unix:data/signer.sock", "signer gRPC address: unix:PATH (the signer's default) or host:port (with mutual TLS, -grpc-tls-*)")
	storeDir := fs.String("store-dir", storepath.DefaultStoreDir, "Nix store directory of the cached paths")
	maxNarSize := fs.Uint64("max-nar-size", 64<<30, "largest NAR file, and largest decompressed NAR, accepted, in bytes")
	maxRatio := fs.Uint64("max-decompression-ratio", narstore.DefaultMaxRatio, "refuse an upload whose decompressed NAR grows past this many times the compressed bytes read (a decompression bomb), once past -decompression-ratio-floor; 0: no bound")
	ratioFloor := fs.Uint64("decompression-ratio-floor", narstore.DefaultRatioFloor, "decompressed bytes an upload may always reach, whatever its ratio (-max-decompression-ratio)")
	maxUploads := fs.Int("max-concurrent-uploads", server.DefaultMaxUploads, "uploads (NARs, side files) received and verified at once; more are answered 503 with Retry-After; 0: no bound")
	var trustedSigKeys envflag.List
	fs.Var(&trustedSigKeys, "trusted-sig-keys", `public keys, "name:base64" as in trusted-public-keys (e.g. cache.nixos.org-1's), whose signatures in a pushed narinfo are kept when they verify (at most 8 a path); every other signature by a key the signer does not hold is dropped; repeatable or comma-separated`)
	signTimeout := fs.Duration("sign-timeout", 10*time.Second, "deadline of each call to the signer")
	logFormat := fs.String("log-format", "json", "log format: json or text")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn or error")
	grace := fs.Duration("shutdown-grace", 30*time.Second, "how long calls in flight may finish at shutdown")
	authFile := fs.String("auth-file", "", `token file, one "<name> <scopes> <token>" a line (scopes: read,push,admin): the bootstrap tokens, besides those made with AdminService.CreateToken (kept in the catalogue); IndexService's PutNar, PutPathInfo and PutArtifact need push (the gateway forwards its caller's token), AdminService admin, except GetStats, ListKeys and FindMissingPaths (read); the gateways ask the index about tokens`)
	publicRead := fs.Bool("public-read", true, "let callers without a token use the read-scoped admin RPCs (GetStats, ListKeys); false needs -auth-file")
	uploadSpool := fs.String("upload-spool", "", `Unix socket (unix:PATH, mode 0600) where a gateway on this host is handed files to write NAR uploads into, instead of streaming them over gRPC: the bytes cross no socket between the two, and the index verifies each file once the gateway has closed it. It trusts that gateway with the index's files: a process holding a handed-out descriptor can keep a handle to the file and rewrite it after it is stored, so give it only where the gateway runs as the index's user with no isolation from its files anyway (make run), not where the gateway is kept from them (compose mounts them read-only); "auto": upload-spool.sock beside a Unix -listen socket, none for TCP; "": none`)
	metricsListen := fs.String("metrics-listen", "127.0.0.1:9111", "HTTP address serving /metrics and /healthz; empty disables")
	localStore := fs.Bool("local-store", false, "also serve the host's Nix store (-store-dir, which must be readable), as nix-serve does, learning its paths from the Nix daemon")
	daemonSocket := fs.String("nix-daemon-socket", "/nix/var/nix/daemon-socket/socket", "the Nix daemon's socket (with -local-store)")
	nixLogDir := fs.String("nix-log-dir", "/nix/var/log/nix/drvs", "the host's build-log directory, served as GET /log/<drv> (with -local-store; \"\" for none)")
	nixDB := fs.String("nix-db", "/nix/var/nix/db/db.sqlite", "Nix's database, only stat'ed to notice new and deleted paths (with -local-store)")
	localSyncInterval := fs.Duration("local-sync-interval", time.Second, "how often the host's store is checked for new and deleted paths (with -local-store)")
	hostNarMaxSize := fs.Uint64("host-nar-max-size", 10<<30, "byte budget of the copies (-host-nar-compression) of host paths' NARs, made after a path's first download and then served like pushed files (<data-dir>/nars/host; least recently used dropped first); 0 makes none (with -local-store)")
	hostNarCompression := fs.String("host-nar-compression", hostnar.DefaultCompression, "compression of the copies of host paths' NARs: zstd (smaller, for clients on a slow network) or none (plain NARs, sent as fast as a web server sends a file; they take the NAR's size of the budget) (with -local-store)")
	hostNarLevel := fs.Int("host-nar-level", hostnar.DefaultLevel, "zstd level of the copies of host paths' NARs, 1 to 22 (with -local-store)")
	hostNarAhead := fs.Bool("host-nar-ahead", false, "copy every host path as soon as it is catalogued, in the background at low priority while the budget has room, not only after its first download (with -local-store)")
	gcMaxSize := fs.Uint64("gc-max-size", 0, "garbage collection keeps at most this many bytes of NAR files, least recently downloaded deleted first (0: no limit)")
	gcMaxAge := fs.Duration("gc-max-age", 0, "garbage collection deletes paths not downloaded for this long (0: no limit)")
	gcInterval := fs.Duration("gc-interval", 0, "run garbage collection with -gc-max-size and -gc-max-age this often (0: only when asked, AdminService.CollectGarbage)")
	serverTLS := grpcutil.ServerTLSFlags(fs)
	signerTLS := grpcutil.ClientTLSFlags(fs)

	narBackend := fs.String("nar-backend", "disk", "where the NAR files are kept: disk (<data-dir>/nars) or s3 (an S3-compatible bucket, -s3-*)")
	s3Endpoint := fs.String("s3-endpoint", "https://s3.amazonaws.com", "URL of the S3 API (with -nar-backend=s3); http:// or https://")
	s3Bucket := fs.String("s3-bucket", "", "bucket of the NAR files (with -nar-backend=s3); it must exist")
	s3CreateBucket := fs.Bool("s3-create-bucket", false, "make the bucket at start when it does not exist (otherwise a missing bucket stops the index)")
	s3Prefix := fs.String("s3-prefix", "", "prefix of the object names in the bucket: the files are <prefix>nars/<2 chars>/<file hash>.nar<ext>")
	s3Region := fs.String("s3-region", "us-east-1", "region of the bucket (part of every signature)")
	s3PathStyle := fs.Bool("s3-path-style", false, "address the bucket as <endpoint>/<bucket> (self-hosted servers); default: virtual-hosted <bucket>.<endpoint> for AWS, path style elsewhere")
	s3CredentialsFile := fs.String("s3-credentials-file", "", "AWS shared-credentials file (profile $AWS_PROFILE, else default); empty: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN) from the environment")
	s3PartSize := fs.Uint64("s3-part-size", 16<<20, "part size of multipart uploads; larger files are uploaded in parts, read from the verified upload file (at least 5 MiB)")
	s3PresignEndpoint := fs.String("s3-presign-endpoint", "", "URL of the S3 API as clients reach it, for presigned NAR URLs (gateway -nar-redirect); empty: -s3-endpoint")
	s3PresignExpiry := fs.Duration("s3-presign-expiry", time.Hour, "how long a presigned NAR URL works (gateway -nar-redirect); 0 makes none")
	var upstreams, upstreamKeys envflag.List
	fs.Var(&upstreams, "upstream", "upstream binary cache (http:// or https://) where a path the index lacks is looked up, fetched and then served; repeatable or comma-separated, asked in order")
	fs.Var(&upstreamKeys, "upstream-key", `trusted public key of the upstreams, "name:base64" as in trusted-public-keys; an upstream path is accepted only with a valid signature by one; repeatable or comma-separated`)
	upstreamTimeout := fs.Duration("upstream-timeout", 5*time.Second, "bound on connecting to an upstream, each narinfo lookup, and any silence of an upstream during a NAR download")
	upstreamNegativeTTL := fs.Duration("upstream-negative-ttl", 30*time.Second, "how long a path no upstream has is answered absent without asking again, and an unreachable upstream is skipped (0: not remembered)")
	upstreamFetchTimeout := fs.Duration("upstream-fetch-timeout", 30*time.Minute, "bound on fetching one upstream path with the part of its closure the index lacks; it goes on after the caller gave up, so a retry finds it")
	if err := program.Parse(fs, args); err != nil {
		return err
	}
	log, err := program.Logger(stderr, *logFormat, *logLevel)
	if err != nil {
		return err
	}
	opts := app.Options{
		DataDir:        *dataDir,
		SignerAddr:     *signerAddr,
		StoreDir:       *storeDir,
		MaxNarSize:     *maxNarSize,
		NarLimits:      narstore.Limits{MaxRatio: *maxRatio, RatioFloor: *ratioFloor},
		MaxUploads:     *maxUploads,
		TrustedSigKeys: trustedSigKeys.Values,
		SignTimeout:    *signTimeout,
		ShutdownGrace:  *grace,
		Log:            log,
		AuthFile:       *authFile,
		PrivateRead:    !*publicRead,

		LocalStore:         *localStore,
		NixDaemonSocket:    *daemonSocket,
		NixDB:              *nixDB,
		NixLogDir:          *nixLogDir,
		LocalSyncInterval:  *localSyncInterval,
		HostNarMaxSize:     *hostNarMaxSize,
		HostNarCompression: *hostNarCompression,
		HostNarLevel:       *hostNarLevel,
		HostNarAhead:       *hostNarAhead,

		GCMaxSize:  *gcMaxSize,
		GCMaxAge:   *gcMaxAge,
		GCInterval: *gcInterval,

		TLS:       *serverTLS,
		SignerTLS: *signerTLS,

		Upstreams:            upstreams.Values,
		UpstreamKeys:         upstreamKeys.Values,
		UpstreamTimeout:      *upstreamTimeout,
		UpstreamNegativeTTL:  *upstreamNegativeTTL,
		UpstreamFetchTimeout: *upstreamFetchTimeout,

		NarBackend: *narBackend,
		Bucket: narstore.BucketConfig{
			Endpoint:        *s3Endpoint,
			PresignEndpoint: *s3PresignEndpoint,
			Bucket:          *s3Bucket,
			Prefix:          *s3Prefix,
			Region:          *s3Region,
			PathStyle:       *s3PathStyle,
			CredentialsFile: *s3CredentialsFile,
			PartSize:        *s3PartSize,
			CreateBucket:    *s3CreateBucket,
		},
		PresignExpiry: *s3PresignExpiry,
	}
	if err := opts.Validate(); err != nil {
		return program.UsageError(fmt.Errorf("bad configuration: %w", err))
	}

	ctx, stop := program.SignalContext()
	defer stop()
	lis, err := listen.Listen(serverTLS, log)
	if err != nil {
		return err
	}
	spoolPath, err := grpcutil.SpoolSocket(*uploadSpool, listen.Addr)
	if err != nil {
		return program.UsageError(err)
	}
	if spoolPath != "" {
		slis, err := grpcutil.ListenSocket(spoolPath)
		if err != nil {
			return fmt.Errorf("upload spool: %w", err)
		}
		defer slis.Close()
		opts.SpoolListener = slis
	}
	if *metricsListen != "" {
		mlis, err := net.Listen("tcp", *metricsListen)
		if err != nil {
			return fmt.Errorf("listen for metrics: %w", err)
		}
		defer mlis.Close()
		opts.MetricsListener = mlis
	}
	return app.Run(ctx, opts, lis)
}

// runCheck is `nixcache-index check`: the startup consistency check of a
// stopped index's data directory, with its repairs, and nothing else.
func runCheck(args []string, stdout, stderr io.Writer) error {
	fs := program.FlagSet(name+" check", stderr)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: nixcache-index check [flags]\n\n"+
			"Checks a stopped index's data directory as every start does: each catalogued NAR file\n"+
			"exists with its recorded size (a published path whose file does not is quarantined),\n"+
			"files no record names are moved to orphans/, tmp/ is emptied. Prints the report.\n"+
			"NAR files in an S3 bucket (-s3-*) are checked by every start of the index, not here.")
		fs.PrintDefaults()
	}
	dataDir := fs.String("data-dir", "data/index", "directory of the catalogue (catalog.db) and the NAR files")
	maxNarSize := fs.Uint64("max-nar-size", 64<<30, "largest NAR file accepted, in bytes (as the index's flag)")
	logFormat := fs.String("log-format", "text", "log format: json or text")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn or error")
	if err := program.Parse(fs, args); err != nil {
		return err
	}
	log, err := program.Logger(stderr, *logFormat, *logLevel)
	if err != nil {
		return err
	}
	r, err := app.Check(context.Background(), *dataDir, *maxNarSize, log)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%d mismatches repaired: %d paths quarantined, %d paths with an incomplete closure quarantined, %d NAR file records dropped, %d orphan files moved to %s; checked %d paths, %d NAR file records, %d files in %s\n",
		r.Mismatches(), r.QuarantinedPaths, r.IncompletePaths, r.DroppedNarFiles, r.Orphans, filepath.Join(*dataDir, "orphans"),
		r.Paths, r.NarFiles, r.Files, r.Duration.Round(time.Millisecond))
	if r.HostOnlyPaths > 0 {
		fmt.Fprintf(stdout, "%d published paths refer to paths served only from the host's store (left published; see the log)\n", r.HostOnlyPaths)
	}
	return nil
}
