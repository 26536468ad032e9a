package auth

import (
	"context"
	"net"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/test/bufconn"
)

// TestForwardDialOptions: the credentials put in a context reach the
// server on the forwarded methods only, once, and never replace the ones
// a call sets itself.
func TestForwardDialOptions(t *testing.T) {
	var mu sync.Mutex
	seen := map[string][]string{}
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer(
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			md, _ := metadata.FromIncomingContext(ctx)
			mu.Lock()
			seen[info.FullMethod] = md.Get(authorizationKey)
			mu.Unlock()
			return h(ctx, req)
		}))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	cc, err := grpc.NewClient("passthrough:///bufnet", append(ForwardDialOptions(checkMethod),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	client := healthpb.NewHealthClient(cc)
	got := func(ctx context.Context) []string {
		t.Helper()
		if _, err := client.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		defer mu.Unlock()
		return seen[checkMethod]
	}

	ctx := WithForwarded(t.Context(), "Bearer caller")
	if v := got(ctx); len(v) != 1 || v[0] != "Bearer caller" {
		t.Errorf("forwarded: authorization %q, want [Bearer caller]", v)
	}
	if v := got(t.Context()); len(v) != 0 {
		t.Errorf("nothing to forward: authorization %q", v)
	}
	own := metadata.AppendToOutgoingContext(ctx, authorizationKey, "Bearer own")
	if v := got(own); len(v) != 1 || v[0] != "Bearer own" {
		t.Errorf("call with its own: authorization %q, want [Bearer own]", v)
	}
	if _, err := client.List(ctx, &healthpb.HealthListRequest{}); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if v := seen[listMethod]; len(v) != 0 {
		t.Errorf("method not forwarded: authorization %q", v)
	}
}
