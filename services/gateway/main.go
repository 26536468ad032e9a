// Command nixcache-gateway serves the Nix binary-cache HTTP protocol in
// front of the nixcache index service. It never talks to the signer.
package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"github.com/nixcache/nixcache/nix/storepath"
	"github.com/nixcache/nixcache/platform/grpcutil"
	"github.com/nixcache/nixcache/platform/healthcheck"
	"github.com/nixcache/nixcache/platform/program"
	"github.com/nixcache/nixcache/services/gateway/internal/app"
)

const name = "nixcache-gateway"

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

// run is the program; it returns the exit code: 0, 1 when it failed, 2 on
// bad usage (platform/program).
func run(args []string, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "healthcheck":
			return healthcheck.Main(name, "127.0.0.1:5000", healthcheck.HTTPGet("/healthz"), args[1:], stderr)
		}
	}
	return program.Exit(name, serve(args, stderr), stderr)
}

func serve(args []string, stderr io.Writer) error {
	fs := program.FlagSet(name, stderr)
	listen := fs.String("listen", "127.0.0.1:5000", "HTTP address to serve the binary cache on")
	var o app.Options
	fs.StringVar(&o.IndexAddr, "index-addr", "unix:data/index.sock", "gRPC address of the index service: unix:PATH (the index's default) or host:port (with mutual TLS, -grpc-tls-*)")
	signerAddr := fs.String("signer-addr", "", "deprecated and ignored: the gateway no longer talks to the signer (it learns the public keys from the index)")
	fs.StringVar(&o.StoreDir, "store-dir", storepath.DefaultStoreDir, "Nix store directory the cache serves paths of")
	fs.IntVar(&o.Priority, "priority", 30, "cache priority announced in nix-cache-info (lower is preferred; cache.nixos.org is 40)")
	fs.StringVar(&o.AuthFile, "auth-file", "", `token file, one "<name> <scopes> <token>" a line, scopes a comma list of read,push,admin: accepted besides the index's tokens (its -auth-file and those made with CreateToken, checked by asking the index); empty: the index's alone`)
	publicRead := fs.Bool("public-read", true, "let anyone read (nix-cache-info, narinfos, NARs); false requires a token with the read scope (Nix clients send it from a netrc file)")
	fs.Int64Var(&o.MaxNarinfoSize, "max-narinfo-size", 64<<10, "largest narinfo a client may push, in bytes")
	fs.DurationVar(&o.RequestTimeout, "request-timeout", 30*time.Second, "bound on each index call, and on the wait for a NAR stream to start")
	fs.DurationVar(&o.TransferIdleTimeout, "transfer-idle-timeout", 2*time.Minute, "longest an upload (NAR, build log, side file) or a NAR download may make no progress; a stalled upload is answered 408 (0: unbounded)")
	fs.StringVar(&o.PublicURL, "public-url", "", "URL clients reach the cache at, as the landing page shows it (default: the scheme and Host of each request)")
	fs.BoolVar(&o.NarRedirect, "nar-redirect", false, "answer GET /nar/<file hash>.nar* with a redirect (307) to a presigned URL of the file when the index keeps NARs in a bucket (index -nar-backend=s3): clients download from the bucket, which they must be able to reach (index -s3-presign-endpoint)")
	fs.BoolVar(&o.ZstdLocal, "zstd-local", false, "compress NARs served uncompressed (the index's -local-store paths) with zstd on the fly for clients that send Accept-Encoding: zstd; costs CPU, pays off only on slow links")
	fs.DurationVar(&o.NarinfoCacheTTL, "narinfo-cache-ttl", 2*time.Second, "while the gateway does not follow the index's changes (-narinfo-cache-max-age 0, or the watch is down): how long a narinfo found in the index is served from the gateway's memory; a deleted, collected or quarantined path may be served this long after; 0 caches nothing then")
	fs.DurationVar(&o.NarinfoCacheMaxAge, "narinfo-cache-max-age", time.Hour, "while the gateway follows the index's changes (its watch stream is in sync): how long a narinfo, or a 404, is served from memory; a change of the path drops it at once (see docs/architecture.md); 0 does not watch the index, leaving -narinfo-cache-ttl alone")
	fs.Int64Var(&o.NarinfoCacheSize, "narinfo-cache-size", 64<<20, "memory of the narinfo cache, in bytes (a narinfo plus about 320 bytes an entry); least recently used entries go first")
	fs.StringVar(&o.LocalStoreDir, "local-store-dir", "", "the host's Nix store directory (e.g. /nix/store), when this gateway runs on the host of an index with -local-store and can read it: the NARs of the host's paths are dumped by the gateway itself, large files sent with sendfile, instead of streamed through the index; empty streams them")
	fs.StringVar(&o.NarDir, "nar-dir", "", "the index's nars/ directory (<index -data-dir>/nars), when this gateway can read it (same host, read-only mount): stored NAR files the index names are sent from it with sendfile instead of streamed through the index; empty streams every NAR")
	uploadSpool := fs.String("upload-spool", grpcutil.SpoolAuto, `the index's upload spool socket (its -upload-spool), when this gateway runs on the index's host: a NAR upload is written into a file the index hands over there and verified by the index from the disk, instead of streamed over gRPC; "auto": upload-spool.sock beside a Unix -index-addr, none for TCP; "": stream every upload. Without the socket (an older index, another host) uploads are streamed`)
	fs.DurationVar(&o.ReadHeaderTimeout, "read-header-timeout", 10*time.Second, "longest a client may take to send a request's headers; slower ones (slowloris) are cut off")
	fs.DurationVar(&o.ShutdownGrace, "shutdown-grace", 30*time.Second, "how long running requests may finish after SIGINT/SIGTERM")
	upstreamTLS := grpcutil.ClientTLSFlags(fs)
	logFormat := fs.String("log-format", "json", "log format: json or text")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn or error")
	if err := program.Parse(fs, args); err != nil {
		return err
	}
	log, err := program.Logger(stderr, *logFormat, *logLevel)
	if err != nil {
		return err
	}
	o.Log = log
	if o.UploadSpool, err = grpcutil.SpoolSocket(*uploadSpool, o.IndexAddr); err != nil {
		return program.UsageError(err)
	}
	if *signerAddr != "" {
		log.Warn("-signer-addr (NIXCACHE_SIGNER_ADDR) is deprecated and ignored: the gateway never talks to the signer; remove it", "signer_addr", *signerAddr)
	}
	o.PrivateRead = !*publicRead
	o.UpstreamTLS = *upstreamTLS

	ctx, stop := program.SignalContext()
	defer stop()
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	return app.Run(ctx, o, lis)
}
