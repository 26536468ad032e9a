// Package grpcutil sets up gRPC servers and clients the same way in every
// nixcache service: health and reflection registered, request ids carried
// in metadata, panics turned into errors, and a graceful stop.
package grpcutil

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime/debug"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	"github.com/nixcache/nixcache/platform/logging"
)

// ChunkSize is the size of the data chunks NAR streams are cut into.
const ChunkSize = 256 << 10

// transportBufferSize is the size of the read and write buffers of every
// gRPC connection, client and server: a NAR chunk (ChunkSize and its
// framing) passes in one or two syscalls instead of the eight or more of
// gRPC's 32 KiB default. One pair per connection, and the services hold
// few connections.
const transportBufferSize = ChunkSize + 64<<10

// Server is a gRPC server with its health service.
type Server struct {
	GRPC   *grpc.Server
	Health *health.Server
	log    *slog.Logger
}

// NewServer returns a server with grpc.health.v1 and server reflection
// registered. Services register themselves on s.GRPC, then call Serve.
func NewServer(log *slog.Logger, opts ...grpc.ServerOption) *Server {
	base := []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(unaryServerInterceptor(log)),
		grpc.ChainStreamInterceptor(streamServerInterceptor(log)),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             10 * time.Second,
			PermitWithoutStream: true,
		}),
		grpc.ReadBufferSize(transportBufferSize),
		grpc.WriteBufferSize(transportBufferSize),
	}
	srv := grpc.NewServer(append(base, opts...)...)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	reflection.Register(srv)
	return &Server{GRPC: srv, Health: hs, log: log}
}

// Serve serves on lis until ctx is done; then it reports NOT_SERVING, stops
// gracefully, and after grace cuts the remaining calls. lis is closed.
func (s *Server) Serve(ctx context.Context, lis net.Listener, grace time.Duration) error {
	errc := make(chan error, 1)
	go func() { errc <- s.GRPC.Serve(lis) }()
	select {
	case err := <-errc:
		return fmt.Errorf("grpc serve %s: %w", lis.Addr(), err)
	case <-ctx.Done():
	}
	s.Health.Shutdown()
	stopped := make(chan struct{})
	go func() {
		s.GRPC.GracefulStop()
		close(stopped)
	}()
	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case <-stopped:
	case <-timer.C:
		s.log.Warn("graceful stop timed out, cutting remaining calls", "grace", grace)
		s.GRPC.Stop()
		<-stopped
	}
	if err := <-errc; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("grpc serve %s: %w", lis.Addr(), err)
	}
	return nil
}

// Dial returns a client connection to target; it connects lazily.
func Dial(target string, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	base := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithChainUnaryInterceptor(unaryClientInterceptor),
		grpc.WithChainStreamInterceptor(streamClientInterceptor),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{
			Time:                30 * time.Second,
			Timeout:             10 * time.Second,
			PermitWithoutStream: true,
		}),
		// Upstreams are named by plain host:port; no service config is
		// looked up in DNS (a TXT query that Docker's DNS on an internal
		// network leaves hanging for 10 s).
		grpc.WithDisableServiceConfig(),
		grpc.WithReadBufferSize(transportBufferSize),
		grpc.WithWriteBufferSize(transportBufferSize),
		// An upstream back after an outage is used again within seconds,
		// not after gRPC's default backoff of up to two minutes.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{
				BaseDelay:  100 * time.Millisecond,
				Multiplier: 1.6,
				Jitter:     0.2,
				MaxDelay:   3 * time.Second,
			},
			MinConnectTimeout: 5 * time.Second,
		}),
	}
	cc, err := grpc.NewClient(target, append(base, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("grpc client %s: %w", target, err)
	}
	return cc, nil
}

func incomingRequestID(ctx context.Context) context.Context {
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if ids := md.Get(logging.RequestIDHeader); len(ids) > 0 && ids[0] != "" {
			return logging.WithRequestID(ctx, ids[0])
		}
	}
	return ctx
}

func outgoingRequestID(ctx context.Context) context.Context {
	if id := logging.RequestID(ctx); id != "" {
		return metadata.AppendToOutgoingContext(ctx, logging.RequestIDHeader, id)
	}
	return ctx
}

func logCall(ctx context.Context, log *slog.Logger, method string, start time.Time, err error) {
	code := status.Code(err)
	level := slog.LevelDebug
	if code == codes.Internal || code == codes.Unknown || code == codes.DataLoss {
		level = slog.LevelError
	}
	log.Log(ctx, level, "grpc call", "method", method, "code", code.String(),
		"duration", time.Since(start), "request_id", logging.RequestID(ctx), "err", err)
}

func recovered(log *slog.Logger, method string, p any) error {
	log.Error("panic in grpc handler", "method", method, "panic", p, "stack", string(debug.Stack()))
	return status.Error(codes.Internal, "internal error")
}

func unaryServerInterceptor(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
		ctx = incomingRequestID(ctx)
		start := time.Now()
		defer func() {
			if p := recover(); p != nil {
				err = recovered(log, info.FullMethod, p)
			}
			logCall(ctx, log, info.FullMethod, start, err)
		}()
		return handler(ctx, req)
	}
}

type contextStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s contextStream) Context() context.Context { return s.ctx }

func streamServerInterceptor(log *slog.Logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
		ctx := incomingRequestID(ss.Context())
		start := time.Now()
		defer func() {
			if p := recover(); p != nil {
				err = recovered(log, info.FullMethod, p)
			}
			logCall(ctx, log, info.FullMethod, start, err)
		}()
		return handler(srv, contextStream{ServerStream: ss, ctx: ctx})
	}
}

func unaryClientInterceptor(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	return invoker(outgoingRequestID(ctx), method, req, reply, cc, opts...)
}

func streamClientInterceptor(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	return streamer(outgoingRequestID(ctx), desc, cc, method, opts...)
}
