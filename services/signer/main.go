// Command nixcache-signer holds a Nix binary cache's secret keys and signs
// store path fingerprints for the other nixcache services over gRPC.
//
//	nixcache-signer [flags]                              serve
//	nixcache-signer keygen NAME SECRET-FILE PUBLIC-FILE  make a key pair
//	nixcache-signer list-keys [-addr ADDR]               print a running signer's public keys
//	nixcache-signer healthcheck [-addr ADDR]             exit 0 if a running signer is healthy
package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"github.com/nixcache/nixcache/platform/envflag"
	"github.com/nixcache/nixcache/platform/grpcutil"
	"github.com/nixcache/nixcache/platform/healthcheck"
	"github.com/nixcache/nixcache/platform/program"
	"github.com/nixcache/nixcache/services/signer/internal/app"
	"github.com/nixcache/nixcache/services/signer/internal/keyfile"
)

const (
	name = "nixcache-signer"
	// defaultListen is a Unix socket in the data directory, which only
	// the services' user can reach: no other user of the host can get a
	// signature.
	defaultListen = "unix:data/signer.sock"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

// run is the program; it returns the exit code: 0, 1 when it failed, 2 on
// bad usage (platform/program).
func run(args []string, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "keygen":
			return program.Exit(name+" keygen", keygen(args[1:], stderr), stderr)
		case "list-keys":
			return listKeys(args[1:], os.Stdout, stderr)
		case "healthcheck":
			return healthcheck.GRPCMain(name, defaultListen, args[1:], stderr)
		}
	}
	return program.Exit(name, serve(args, stderr), stderr)
}

func serve(args []string, stderr io.Writer) error {
	fs := program.FlagSet(name, stderr)
	listen := grpcutil.ListenFlags(fs, defaultListen)
	var keyFiles envflag.List
	fs.Var(&keyFiles, "key-files", "comma-separated Nix secret key files (mode 0600); every key signs unless retired, the first is the primary")
	keyDir := fs.String("key-dir", "", "directory of the keys made with GenerateKey (`dir`, e.g. data/signer/keys) and of the list of retired keys; loaded at start with -key-files; empty disables GenerateKey and RetireKey")
	metricsListen := fs.String("metrics-listen", "127.0.0.1:9110", "HTTP address serving /metrics and /healthz; empty disables")
	generateKey := fs.String("generate-key", "", "if set and the first key file does not exist, generate a key pair with this `name` into it (public key in <file>.pub); without -key-files, into -key-dir when it holds no active key")
	storeDir := fs.String("store-dir", "/nix/store", "Nix store directory that fingerprints must name")
	maxBatch := fs.Int("max-batch", 10000, "most fingerprints one Sign call may carry")
	logFormat := fs.String("log-format", "json", "log format: json or text")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn or error")
	grace := fs.Duration("shutdown-grace", 10*time.Second, "how long in-flight calls may finish on SIGINT/SIGTERM")
	tlsFiles := grpcutil.ServerTLSFlags(fs)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage:\n  %s [flags]\n  %s keygen NAME SECRET-FILE PUBLIC-FILE\n  %s list-keys [-addr ADDR]\n  %s healthcheck [-addr ADDR]\n\nFlags:\n", name, name, name, name)
		fs.PrintDefaults()
	}
	if err := program.Parse(fs, args); err != nil {
		return err
	}
	log, err := program.Logger(stderr, *logFormat, *logLevel)
	if err != nil {
		return err
	}

	ctx, stop := program.SignalContext()
	defer stop()
	lis, err := listen.Listen(tlsFiles, log)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	defer lis.Close()

	var metricsLis net.Listener
	if *metricsListen != "" {
		if metricsLis, err = net.Listen("tcp", *metricsListen); err != nil {
			return fmt.Errorf("listen for metrics: %w", err)
		}
		defer metricsLis.Close()
	}

	opts := app.Options{
		KeyFiles:        keyFiles.Values,
		KeyDir:          *keyDir,
		MetricsListener: metricsLis,
		GenerateKey:     *generateKey,
		StoreDir:        *storeDir,
		MaxBatch:        *maxBatch,
		ShutdownGrace:   *grace,
		TLS:             *tlsFiles,
		Log:             log,
		Notices:         stderr,
	}
	return app.Run(ctx, opts, lis)
}

func keygen(args []string, stderr io.Writer) error {
	fs := program.FlagSet(name+" keygen", stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: %s keygen NAME SECRET-FILE PUBLIC-FILE\n\n"+
			"Generates a key pair named NAME, like nix-store --generate-binary-cache-key:\n"+
			"the secret key into SECRET-FILE (mode 0600), the public key into PUBLIC-FILE\n"+
			"(mode 0644). Existing files are not overwritten.\n", name)
	}
	if err := fs.Parse(args); err != nil {
		return program.UsageError(err)
	}
	if fs.NArg() != 3 {
		fs.Usage()
		return program.Usagef("want 3 arguments, got %d", fs.NArg())
	}
	_, err := keyfile.Generate(fs.Arg(0), fs.Arg(1), fs.Arg(2))
	return err
}
