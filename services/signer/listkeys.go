package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/nixcache/nixcache/platform/envflag"
	"github.com/nixcache/nixcache/platform/grpcutil"
	"github.com/nixcache/nixcache/platform/healthcheck"
	signerv1 "github.com/nixcache/nixcache/proto/nixcache/signer/v1"
)

// listKeys is `nixcache-signer list-keys`: it asks a running signer for its
// public keys (ListKeys) and prints them one a line, as Nix's
// trusted-public-keys takes them. Retired keys are printed too: clients
// need them to verify what was signed before. It returns the exit code.
func listKeys(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet(name+" list-keys", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", healthcheck.SelfAddr(defaultListen), "gRPC address of the signer; the default is $"+healthcheck.ListenEnv+" when set (a wildcard host made loopback), else the default listen address")
	timeout := fs.Duration("timeout", 5*time.Second, "how long the call may take")
	tlsFiles := grpcutil.ClientTLSFlags(fs)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: %s list-keys [flags]\n\n"+
			"Prints the public keys of a running signer, one a line, as trusted-public-keys takes them.\n\nFlags:\n", name)
		fs.PrintDefaults()
	}
	// The TLS flags take their NIXCACHE_GRPC_TLS_* twins, as the
	// healthcheck does.
	if err := envflag.ParseOnly(fs, args, grpcutil.ClientTLSFlagNames...); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "%s list-keys: %v\n", name, err)
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "%s list-keys: unexpected argument %q\n", name, fs.Arg(0))
		return 2
	}
	if err := tlsFiles.Validate(); err != nil {
		fmt.Fprintf(stderr, "%s list-keys: %v\n", name, err)
		return 2
	}
	creds, err := tlsFiles.DialOption(*addr, nil)
	if err != nil {
		fmt.Fprintf(stderr, "%s list-keys: %v\n", name, err)
		return 1
	}
	cc, err := grpcutil.Dial(*addr, creds)
	if err != nil {
		fmt.Fprintf(stderr, "%s list-keys: %v\n", name, err)
		return 1
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	resp, err := signerv1.NewSignerServiceClient(cc).ListKeys(ctx, &signerv1.ListKeysRequest{})
	if err != nil {
		fmt.Fprintf(stderr, "%s list-keys: signer at %s: %v\n", name, *addr, err)
		return 1
	}
	for _, k := range resp.GetKeys() {
		fmt.Fprintln(stdout, k.GetPublicKey())
	}
	return 0
}
