package metrics

import (
	"context"
	"errors"
	"io"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// grpc_type label values.
const (
	unary        = "unary"
	clientStream = "client_stream"
	serverStream = "server_stream"
	bidiStream   = "bidi_stream"
)

func streamType(clientStreams, serverStreams bool) string {
	switch {
	case clientStreams && serverStreams:
		return bidiStream
	case clientStreams:
		return clientStream
	case serverStreams:
		return serverStream
	default:
		return unary
	}
}

// GRPCServer measures the calls a gRPC server handles: how many finished,
// by method and code; how long they took (a stream counts until it ends);
// and how many are running.
type GRPCServer struct {
	handled  *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	inFlight *prometheus.GaugeVec
}

// NewGRPCServer registers the gRPC server metrics with reg.
func NewGRPCServer(reg prometheus.Registerer) *GRPCServer {
	labels := []string{"grpc_type", "grpc_service", "grpc_method"}
	m := &GRPCServer{
		handled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grpc_server_handled_total",
			Help: "gRPC calls finished by the server, by method and status code.",
		}, append(labels, "grpc_code")),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "grpc_server_handling_seconds",
			Help:    "Time the server took to finish a gRPC call (streams: until the stream ended).",
			Buckets: latencyBuckets,
		}, labels),
		inFlight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "grpc_server_in_flight",
			Help: "gRPC calls the server is handling now.",
		}, labels),
	}
	reg.MustRegister(m.handled, m.latency, m.inFlight)
	return m
}

// ServerOptions returns the interceptors, for grpcutil.NewServer.
func (m *GRPCServer) ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(m.UnaryInterceptor()),
		grpc.ChainStreamInterceptor(m.StreamInterceptor()),
	}
}

// UnaryInterceptor measures unary calls.
func (m *GRPCServer) UnaryInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		done := m.begin(unary, info.FullMethod)
		resp, err := handler(ctx, req)
		done(err)
		return resp, err
	}
}

// StreamInterceptor measures streaming calls.
func (m *GRPCServer) StreamInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		done := m.begin(streamType(info.IsClientStream, info.IsServerStream), info.FullMethod)
		err := handler(srv, ss)
		done(err)
		return err
	}
}

// begin counts a call in flight; the function it returns records its end.
// A handler that panics is not recorded here; grpcutil's outer interceptor
// turns the panic into Internal.
func (m *GRPCServer) begin(typ, fullMethod string) func(error) {
	service, method := splitMethod(fullMethod)
	start := time.Now()
	inFlight := m.inFlight.WithLabelValues(typ, service, method)
	inFlight.Inc()
	return func(err error) {
		inFlight.Dec()
		m.latency.WithLabelValues(typ, service, method).Observe(time.Since(start).Seconds())
		m.handled.WithLabelValues(typ, service, method, status.Code(err).String()).Inc()
	}
}

// GRPCClient measures the calls a service makes to its upstreams.
type GRPCClient struct {
	handled *prometheus.CounterVec
	latency *prometheus.HistogramVec
}

// NewGRPCClient registers the gRPC client metrics with reg.
func NewGRPCClient(reg prometheus.Registerer) *GRPCClient {
	labels := []string{"grpc_type", "grpc_service", "grpc_method"}
	m := &GRPCClient{
		handled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grpc_client_handled_total",
			Help: "gRPC calls to upstream services finished, by method and status code.",
		}, append(labels, "grpc_code")),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "grpc_client_handling_seconds",
			Help:    "Time gRPC calls to upstream services took (streams: until the stream ended).",
			Buckets: latencyBuckets,
		}, labels),
	}
	reg.MustRegister(m.handled, m.latency)
	return m
}

// DialOptions returns the interceptors, for grpcutil.Dial.
func (m *GRPCClient) DialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithChainUnaryInterceptor(m.UnaryInterceptor()),
		grpc.WithChainStreamInterceptor(m.StreamInterceptor()),
	}
}

// UnaryInterceptor measures unary calls.
func (m *GRPCClient) UnaryInterceptor() grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		start := time.Now()
		err := invoker(ctx, method, req, reply, cc, opts...)
		m.record(unary, method, start, err)
		return err
	}
}

// StreamInterceptor measures streaming calls. A stream is recorded when
// RecvMsg returns its end (io.EOF or an error), when opening it fails, or,
// if the caller abandons it, when its context ends (as Canceled or
// DeadlineExceeded).
func (m *GRPCClient) StreamInterceptor() grpc.StreamClientInterceptor {
	return func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		start := time.Now()
		typ := streamType(desc.ClientStreams, desc.ServerStreams)
		cs, err := streamer(ctx, desc, cc, method, opts...)
		if err != nil {
			m.record(typ, method, start, err)
			return nil, err
		}
		rec := &clientStreamRecorder{ClientStream: cs, serverStreams: desc.ServerStreams}
		rec.end = func(err error) { m.record(typ, method, start, err) }
		rec.stop = context.AfterFunc(ctx, func() { rec.finish(status.FromContextError(ctx.Err()).Err()) })
		return rec, nil
	}
}

func (m *GRPCClient) record(typ, fullMethod string, start time.Time, err error) {
	service, method := splitMethod(fullMethod)
	m.latency.WithLabelValues(typ, service, method).Observe(time.Since(start).Seconds())
	m.handled.WithLabelValues(typ, service, method, status.Code(err).String()).Inc()
}

// clientStreamRecorder records a client stream's end once.
type clientStreamRecorder struct {
	grpc.ClientStream
	serverStreams bool
	end           func(error)
	stop          func() bool // stops waiting for the context's end
	once          sync.Once
}

// RecvMsg records the end of the stream: io.EOF (or, when the server sends
// one message only, that message) is OK, another error its code.
func (s *clientStreamRecorder) RecvMsg(msg any) error {
	err := s.ClientStream.RecvMsg(msg)
	switch {
	case errors.Is(err, io.EOF), err == nil && !s.serverStreams:
		s.finish(nil)
	case err != nil:
		s.finish(err)
	}
	return err
}

func (s *clientStreamRecorder) finish(err error) {
	s.once.Do(func() {
		s.stop()
		s.end(err)
	})
}
