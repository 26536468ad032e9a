package auth

import (
	"context"
	"encoding/base64"
	"net"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
)

const (
	checkMethod = "/grpc.health.v1.Health/Check" // unary
	watchMethod = "/grpc.health.v1.Health/Watch" // server streaming
	listMethod  = "/grpc.health.v1.Health/List"  // not in the rules
)

// identities records the identity each call reached its handler with.
type identities struct {
	mu   sync.Mutex
	seen map[string]Identity
}

func (ids *identities) record(ctx context.Context, method string) {
	ids.mu.Lock()
	defer ids.mu.Unlock()
	id, ok := IdentityFrom(ctx)
	if !ok {
		id = Identity{Name: "<unchecked>"}
	}
	ids.seen[method] = id
}

func (ids *identities) get(method string) (Identity, bool) {
	ids.mu.Lock()
	defer ids.mu.Unlock()
	id, ok := ids.seen[method]
	return id, ok
}

// serveHealth serves grpc.health.v1 behind the policy's interceptors on a
// bufconn and returns a client.
func serveHealth(t *testing.T, p Policy, rules Rules) (healthpb.HealthClient, *identities) {
	t.Helper()
	ids := &identities{seen: map[string]Identity{}}
	lis := bufconn.Listen(1 << 20)
	opts := append(p.ServerOptions(rules),
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			ids.record(ctx, info.FullMethod)
			return h(ctx, req)
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			ids.record(ss.Context(), info.FullMethod)
			return h(srv, ss)
		}))
	srv := grpc.NewServer(opts...)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return healthpb.NewHealthClient(conn), ids
}

func TestInterceptors(t *testing.T) {
	tokens, err := ParseTokens(strings.NewReader("ops admin,read admintok\nlaptop read readtok\nci push,read pushtok\n"), "t")
	if err != nil {
		t.Fatal(err)
	}
	rules := Rules{checkMethod: Admin, watchMethod: Read}
	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte("nixcache:admintok"))
	tests := []struct {
		name   string
		policy Policy
		method string
		authz  []string // authorization metadata values
		want   codes.Code
		who    string // the identity the handler sees
	}{
		{"admin, no token", Policy{Tokens: tokens, PublicRead: true}, checkMethod, nil, codes.Unauthenticated, ""},
		{"admin, unknown token", Policy{Tokens: tokens, PublicRead: true}, checkMethod, []string{"Bearer nope"}, codes.Unauthenticated, ""},
		{"admin, read token", Policy{Tokens: tokens, PublicRead: true}, checkMethod, []string{"Bearer readtok"}, codes.PermissionDenied, ""},
		{"admin, push token", Policy{Tokens: tokens, PublicRead: true}, checkMethod, []string{"Bearer pushtok"}, codes.PermissionDenied, ""},
		{"admin, admin token", Policy{Tokens: tokens, PublicRead: true}, checkMethod, []string{"Bearer admintok"}, codes.OK, "ops"},
		{"admin, basic", Policy{Tokens: tokens}, checkMethod, []string{basic}, codes.OK, "ops"},
		{"admin, two values", Policy{Tokens: tokens}, checkMethod, []string{"Bearer admintok", "Bearer readtok"}, codes.Unauthenticated, ""},
		{"admin, no tokens configured", Policy{PublicRead: true}, checkMethod, []string{"Bearer admintok"}, codes.Unauthenticated, ""},
		{"public read stream, anonymous", Policy{Tokens: tokens, PublicRead: true}, watchMethod, nil, codes.OK, ""},
		{"public read stream, bad token", Policy{Tokens: tokens, PublicRead: true}, watchMethod, []string{"Bearer nope"}, codes.OK, ""},
		{"private read stream, anonymous", Policy{Tokens: tokens}, watchMethod, nil, codes.Unauthenticated, ""},
		{"private read stream, read token", Policy{Tokens: tokens}, watchMethod, []string{"Bearer readtok"}, codes.OK, "laptop"},
		{"unchecked method, anonymous", Policy{Tokens: tokens}, listMethod, nil, codes.OK, "<unchecked>"},
		{"unchecked method, bad token", Policy{Tokens: tokens}, listMethod, []string{"Bearer nope"}, codes.OK, "<unchecked>"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client, ids := serveHealth(t, tt.policy, rules)
			ctx := t.Context()
			for _, v := range tt.authz {
				ctx = metadata.AppendToOutgoingContext(ctx, "authorization", v)
			}
			var err error
			switch tt.method {
			case checkMethod:
				_, err = client.Check(ctx, &healthpb.HealthCheckRequest{})
			case listMethod:
				_, err = client.List(ctx, &healthpb.HealthListRequest{})
			case watchMethod:
				var stream grpc.ServerStreamingClient[healthpb.HealthCheckResponse]
				stream, err = client.Watch(ctx, &healthpb.HealthCheckRequest{})
				if err == nil {
					_, err = stream.Recv() // the first message, or the refusal
				}
			}
			if got := status.Code(err); got != tt.want {
				t.Fatalf("%s: code %v (%v), want %v", tt.method, got, err, tt.want)
			}
			id, reached := ids.get(tt.method)
			if reached != (tt.want == codes.OK) {
				t.Errorf("handler reached: %v, want %v", reached, tt.want == codes.OK)
			}
			if reached && id.Name != tt.who {
				t.Errorf("handler saw identity %q, want %q", id.Name, tt.who)
			}
			for _, secret := range []string{"admintok", "readtok", "pushtok", "nope"} {
				if err != nil && strings.Contains(err.Error(), secret) {
					t.Errorf("error %q shows a token", err)
				}
			}
		})
	}
}

func TestServiceRules(t *testing.T) {
	sd := &healthpb.Health_ServiceDesc
	rules, err := ServiceRules(sd, Admin, map[string]Scope{"Watch": Read})
	if err != nil {
		t.Fatal(err)
	}
	want := Rules{checkMethod: Admin, listMethod: Admin, watchMethod: Read}
	if len(rules) != len(want) {
		t.Errorf("rules %v, want %v", rules, want)
	}
	for m, s := range want {
		if rules[m] != s {
			t.Errorf("rules[%s] = %v, want %v", m, rules[m], s)
		}
	}
	if _, err := ServiceRules(sd, Admin, map[string]Scope{"Wtach": Read}); err == nil || !strings.Contains(err.Error(), "Wtach") {
		t.Errorf("a rule for a missing method: error %v, want one naming it", err)
	}
}
