// Package healthcheck is the `healthcheck` subcommand of every nixcache
// binary: it asks the service once whether it is healthy and exits 0 when
// it is, 1 when it is not. The container images have no shell and no curl,
// so their health checks run the service's own binary:
//
//	nixcache-signer healthcheck             grpc.health.v1 Check, SERVING
//	nixcache-index healthcheck              the same
//	nixcache-gateway healthcheck            GET /healthz answers 200
//
// Without -addr it probes the address the service listens on, from
// NIXCACHE_LISTEN when that is set (as in the images), with a wildcard host
// (0.0.0.0, ::, none) replaced by loopback. The gRPC checks take the
// client TLS flags (-grpc-tls-cert, -grpc-tls-key, -grpc-tls-ca, and
// their NIXCACHE_GRPC_TLS_* twins) for a service serving mutual TLS.
package healthcheck

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/nixcache/nixcache/platform/envflag"
	"github.com/nixcache/nixcache/platform/grpcutil"
)

// ListenEnv is the environment twin of the services' -listen flag.
const ListenEnv = "NIXCACHE_LISTEN"

// UserAgent is what HTTP probes send, so that a server can tell them from
// clients (and, say, keep them out of its request log).
const UserAgent = "nixcache-healthcheck"

// Probe checks the service at addr (host:port, or unix:PATH for gRPC)
// once; nil means healthy.
type Probe func(ctx context.Context, addr string) error

// GRPC is the Probe of a gRPC service over plain text: grpc.health.v1
// Check of the whole server must answer SERVING.
func GRPC(ctx context.Context, addr string) error {
	return grpcProbe(ctx, addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
}

// grpcProbe is the gRPC Probe over the transport of creds.
func grpcProbe(ctx context.Context, addr string, creds grpc.DialOption) error {
	target := addr
	if _, unix := grpcutil.SocketPath(addr); !unix {
		target = "passthrough:///" + addr
	}
	cc, err := grpc.NewClient(target, creds)
	if err != nil {
		return fmt.Errorf("health check %s: %w", addr, err)
	}
	defer cc.Close()
	resp, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return fmt.Errorf("health check %s: %w", addr, err)
	}
	if st := resp.GetStatus(); st != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("health check %s: status %s", addr, st)
	}
	return nil
}

// HTTPGet returns the Probe of an HTTP service: GET path must answer 200.
func HTTPGet(path string) Probe {
	return func(ctx context.Context, addr string) error {
		url := "http://" + addr + path
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return fmt.Errorf("health check %s: %w", url, err)
		}
		req.Header.Set("User-Agent", UserAgent)
		// A fresh transport: no connection is kept for a process that exits.
		client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
		resp, err := client.Do(req)
		if err != nil {
			return fmt.Errorf("health check: %w", err)
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("health check %s: HTTP status %s", url, resp.Status)
		}
		return nil
	}
}

// SelfAddr is the address at which a subcommand reaches its own service on
// this host: the value of NIXCACHE_LISTEN when it is set, else def, with a
// wildcard or empty host replaced by loopback.
func SelfAddr(def string) string {
	addr := def
	if v := os.Getenv(ListenEnv); v != "" {
		addr = v
	}
	return loopback(addr)
}

// loopback replaces the wildcard host of a listen address with loopback.
func loopback(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	return net.JoinHostPort(host, port)
}

// Main runs `<program> healthcheck [-addr ADDR] [-timeout D]` with args
// (what follows "healthcheck") and returns the exit code: 0 healthy, 1 not,
// 2 bad usage. defaultAddr is the service's default listen address.
func Main(program, defaultAddr string, probe Probe, args []string, stderr io.Writer) int {
	return run(program, defaultAddr, args, stderr, func(*flag.FlagSet) func() (Probe, error) {
		return func() (Probe, error) { return probe, nil }
	})
}

// GRPCMain is Main for a gRPC service: the probe is the grpc.health.v1
// check, over mutual TLS when the client TLS flags are given.
func GRPCMain(program, defaultAddr string, args []string, stderr io.Writer) int {
	return run(program, defaultAddr, args, stderr, func(fs *flag.FlagSet) func() (Probe, error) {
		files := grpcutil.ClientTLSFlags(fs)
		return func() (Probe, error) {
			if err := files.Validate(); err != nil {
				return nil, err
			}
			return func(ctx context.Context, addr string) error {
				creds, err := files.DialOption(addr, nil)
				if err != nil {
					return err
				}
				return grpcProbe(ctx, addr, creds)
			}, nil
		}
	})
}

// run is Main with the probe's own flags registered by flags, which
// returns how to make the probe once the flags are parsed.
func run(program, defaultAddr string, args []string, stderr io.Writer, flags func(*flag.FlagSet) func() (Probe, error)) int {
	fs := flag.NewFlagSet(program+" healthcheck", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", SelfAddr(defaultAddr), "address of the service to check; the default is $"+ListenEnv+" when set (a wildcard host made loopback), else the service's default")
	timeout := fs.Duration("timeout", 3*time.Second, "how long the check may take")
	makeProbe := flags(fs)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: %s healthcheck [flags]\n\n"+
			"Checks once that the service answers healthy: exit status 0 when it does, 1 when not.\n\nFlags:\n", program)
		fs.PrintDefaults()
	}
	// Only the TLS flags take their environment twins: those of the
	// service itself (as the images set them); NIXCACHE_LISTEN is read
	// above.
	if err := envflag.ParseOnly(fs, args, grpcutil.ClientTLSFlagNames...); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "%s healthcheck: %v\n", program, err)
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "%s healthcheck: unexpected argument %q\n", program, fs.Arg(0))
		return 2
	}
	probe, err := makeProbe()
	if err != nil {
		fmt.Fprintf(stderr, "%s healthcheck: %v\n", program, err)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	if err := probe(ctx, *addr); err != nil {
		fmt.Fprintf(stderr, "%s: unhealthy: %v\n", program, err)
		return 1
	}
	return 0
}
