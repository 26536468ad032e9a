package metrics

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// The test service: Get answers with the code named in its request;
// Upload reads messages until the client closes, Download sends as many
// messages as asked, then the code asked.
const testService = "test.v1.TestService"

var testDesc = grpc.ServiceDesc{
	ServiceName: testService,
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Get",
		Handler: func(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
			req := new(wrapperspb.StringValue)
			if err := dec(req); err != nil {
				return nil, err
			}
			h := func(ctx context.Context, req any) (any, error) {
				return answer(req.(*wrapperspb.StringValue).GetValue())
			}
			if interceptor == nil {
				return h(ctx, req)
			}
			return interceptor(ctx, req, &grpc.UnaryServerInfo{Server: srv, FullMethod: "/" + testService + "/Get"}, h)
		},
	}},
	Streams: []grpc.StreamDesc{
		{StreamName: "Upload", ClientStreams: true, Handler: func(srv any, ss grpc.ServerStream) error {
			for {
				if err := ss.RecvMsg(new(wrapperspb.StringValue)); errors.Is(err, io.EOF) {
					return ss.SendMsg(wrapperspb.String("done"))
				} else if err != nil {
					return err
				}
			}
		}},
		{StreamName: "Download", ServerStreams: true, Handler: func(srv any, ss grpc.ServerStream) error {
			req := new(wrapperspb.Int32Value)
			if err := ss.RecvMsg(req); err != nil {
				return err
			}
			for range req.GetValue() {
				if err := ss.SendMsg(wrapperspb.String("chunk")); err != nil {
					return err
				}
			}
			<-ss.Context().Done() // until the client goes away
			return status.FromContextError(ss.Context().Err()).Err()
		}},
	},
}

func answer(code string) (any, error) {
	for c := codes.OK; c <= codes.Unauthenticated; c++ {
		if c.String() == code {
			if c == codes.OK {
				return wrapperspb.String("ok"), nil
			}
			return nil, status.Error(c, "as asked")
		}
	}
	return nil, status.Error(codes.InvalidArgument, "unknown code")
}

// serveTest serves the test service measured by server metrics, and
// returns a connection measured by client metrics.
func serveTest(t *testing.T) (*GRPCServer, *GRPCClient, *grpc.ClientConn) {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	sm, cm := NewGRPCServer(reg), NewGRPCClient(reg)
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer(sm.ServerOptions()...)
	srv.RegisterService(&testDesc, struct{}{})
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("passthrough:///bufnet", append(cm.DialOptions(),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return sm, cm, conn
}

func TestGRPCUnary(t *testing.T) {
	sm, cm, conn := serveTest(t)
	calls := []string{"OK", "OK", "NotFound", "PermissionDenied", "OK"}
	for _, code := range calls {
		err := conn.Invoke(t.Context(), "/"+testService+"/Get", wrapperspb.String(code), new(wrapperspb.StringValue))
		if got := status.Code(err).String(); got != code {
			t.Fatalf("Get(%s) = %v", code, err)
		}
	}
	want := map[string]float64{"OK": 3, "NotFound": 1, "PermissionDenied": 1, "Internal": 0}
	for code, n := range want {
		if got := testutil.ToFloat64(sm.handled.WithLabelValues(unary, testService, "Get", code)); got != n {
			t.Errorf("server handled{code=%s} = %v, want %v", code, got, n)
		}
		if got := testutil.ToFloat64(cm.handled.WithLabelValues(unary, testService, "Get", code)); got != n {
			t.Errorf("client handled{code=%s} = %v, want %v", code, got, n)
		}
	}
	if got := testutil.ToFloat64(sm.inFlight.WithLabelValues(unary, testService, "Get")); got != 0 {
		t.Errorf("in flight after the calls = %v", got)
	}
	for name, h := range map[string]*prometheus.HistogramVec{"server": sm.latency, "client": cm.latency} {
		if n := histogramCount(t, h, unary, testService, "Get"); n != uint64(len(calls)) {
			t.Errorf("%s latency histogram counted %d calls, want %d", name, n, len(calls))
		}
	}
}

func TestGRPCClientStream(t *testing.T) {
	sm, cm, conn := serveTest(t)
	desc := &testDesc.Streams[0]
	cs, err := conn.NewStream(t.Context(), desc, "/"+testService+"/Upload")
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := cs.SendMsg(wrapperspb.String("chunk")); err != nil {
			t.Fatal(err)
		}
	}
	if err := cs.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if err := cs.RecvMsg(new(wrapperspb.StringValue)); err != nil {
		t.Fatal(err)
	}
	// The stream is recorded when its one answer arrives, not later.
	if got := testutil.ToFloat64(cm.handled.WithLabelValues(clientStream, testService, "Upload", "OK")); got != 1 {
		t.Errorf("client handled = %v, want 1", got)
	}
	// The server records the call when its handler returned, which may
	// be just after the client got the answer: wait for the stream to
	// end on the server's side first.
	waitFor(t, func() bool {
		return testutil.ToFloat64(sm.handled.WithLabelValues(clientStream, testService, "Upload", "OK")) == 1
	})
}

func TestGRPCServerStream(t *testing.T) {
	sm, cm, conn := serveTest(t)
	desc := &testDesc.Streams[1]
	ctx, cancel := context.WithCancel(t.Context())
	cs, err := conn.NewStream(ctx, desc, "/"+testService+"/Download")
	if err != nil {
		t.Fatal(err)
	}
	if err := cs.SendMsg(wrapperspb.Int32(2)); err != nil {
		t.Fatal(err)
	}
	if err := cs.CloseSend(); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := cs.RecvMsg(new(wrapperspb.StringValue)); err != nil {
			t.Fatal(err)
		}
	}
	if got := testutil.ToFloat64(sm.inFlight.WithLabelValues(serverStream, testService, "Download")); got != 1 {
		t.Errorf("server in flight during the stream = %v, want 1", got)
	}
	if got := testutil.ToFloat64(cm.handled.WithLabelValues(serverStream, testService, "Download", "OK")); got != 0 {
		t.Errorf("client recorded the stream before its end: %v", got)
	}
	// The client abandons the stream: recorded as Canceled when its
	// context ends, on both sides.
	cancel()
	waitFor(t, func() bool {
		return testutil.ToFloat64(cm.handled.WithLabelValues(serverStream, testService, "Download", "Canceled")) == 1 &&
			testutil.ToFloat64(sm.handled.WithLabelValues(serverStream, testService, "Download", "Canceled")) == 1 &&
			testutil.ToFloat64(sm.inFlight.WithLabelValues(serverStream, testService, "Download")) == 0
	})
}

func TestSplitMethod(t *testing.T) {
	tests := []struct{ full, service, method string }{
		{"/nixcache.index.v1.AdminService/GetStats", "nixcache.index.v1.AdminService", "GetStats"},
		{"/a/b", "a", "b"},
		{"odd", "unknown", "odd"},
	}
	for _, tt := range tests {
		if s, m := splitMethod(tt.full); s != tt.service || m != tt.method {
			t.Errorf("splitMethod(%q) = %q, %q; want %q, %q", tt.full, s, m, tt.service, tt.method)
		}
	}
}
