package app

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/nixcache/nixcache/platform/auth"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
)

// stubAdmin answers every AdminService method it implements with OK.
type stubAdmin struct {
	indexv1.UnimplementedAdminServiceServer
}

func (stubAdmin) GetStats(context.Context, *indexv1.GetStatsRequest) (*indexv1.GetStatsResponse, error) {
	return &indexv1.GetStatsResponse{}, nil
}

func (stubAdmin) ListKeys(context.Context, *indexv1.ListKeysRequest) (*indexv1.ListKeysResponse, error) {
	return &indexv1.ListKeysResponse{}, nil
}

func (stubAdmin) DeletePath(context.Context, *indexv1.DeletePathRequest) (*indexv1.DeletePathResponse, error) {
	return &indexv1.DeletePathResponse{}, nil
}

func (stubAdmin) Verify(_ *indexv1.VerifyRequest, stream indexv1.AdminService_VerifyServer) error {
	return stream.Send(&indexv1.VerifyResponse{Done: true})
}

// serveAdmin serves the stub behind the index's interceptors, configured
// by o, on a bufconn.
func serveAdmin(t *testing.T, o Options) indexv1.AdminServiceClient {
	t.Helper()
	p, err := newOps(o)
	if err != nil {
		t.Fatal(err)
	}
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer(p.serverOptions()...)
	indexv1.RegisterAdminServiceServer(srv, stubAdmin{})
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	cc, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return indexv1.NewAdminServiceClient(cc)
}

// TestAdminAuth checks the scope each AdminService method needs, unary and
// streaming, with public and private reads.
func TestAdminAuth(t *testing.T) {
	authFile := filepath.Join(t.TempDir(), "auth")
	if err := os.WriteFile(authFile, []byte("ops admin admintok\nlaptop read readtok\nci push,read pushtok\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	public := serveAdmin(t, Options{AuthFile: authFile, Log: log})
	private := serveAdmin(t, Options{AuthFile: authFile, PrivateRead: true, Log: log})
	noTokens := serveAdmin(t, Options{Log: log})

	calls := map[string]func(context.Context, indexv1.AdminServiceClient) error{
		"GetStats": func(ctx context.Context, c indexv1.AdminServiceClient) error {
			_, err := c.GetStats(ctx, &indexv1.GetStatsRequest{})
			return err
		},
		"ListKeys": func(ctx context.Context, c indexv1.AdminServiceClient) error {
			_, err := c.ListKeys(ctx, &indexv1.ListKeysRequest{})
			return err
		},
		"DeletePath": func(ctx context.Context, c indexv1.AdminServiceClient) error {
			_, err := c.DeletePath(ctx, &indexv1.DeletePathRequest{Path: "x"})
			return err
		},
		"Verify": func(ctx context.Context, c indexv1.AdminServiceClient) error {
			stream, err := c.Verify(ctx, &indexv1.VerifyRequest{})
			if err != nil {
				return err
			}
			_, err = stream.Recv()
			return err
		},
	}
	tests := []struct {
		name   string
		client indexv1.AdminServiceClient
		method string
		token  string
		want   codes.Code
	}{
		{"stats, public, anonymous", public, "GetStats", "", codes.OK},
		{"keys, public, anonymous", public, "ListKeys", "", codes.OK},
		{"stats, private, anonymous", private, "GetStats", "", codes.Unauthenticated},
		{"stats, private, read token", private, "GetStats", "readtok", codes.OK},
		{"keys, private, admin-only token", private, "ListKeys", "admintok", codes.PermissionDenied},
		{"delete, anonymous", public, "DeletePath", "", codes.Unauthenticated},
		{"delete, wrong token", public, "DeletePath", "nope", codes.Unauthenticated},
		{"delete, read token", public, "DeletePath", "readtok", codes.PermissionDenied},
		{"delete, push token", public, "DeletePath", "pushtok", codes.PermissionDenied},
		{"delete, admin token", public, "DeletePath", "admintok", codes.OK},
		{"verify stream, anonymous", public, "Verify", "", codes.Unauthenticated},
		{"verify stream, read token", private, "Verify", "readtok", codes.PermissionDenied},
		{"verify stream, admin token", private, "Verify", "admintok", codes.OK},
		{"delete, no auth file", noTokens, "DeletePath", "admintok", codes.Unauthenticated},
		{"stats, no auth file", noTokens, "GetStats", "", codes.OK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := t.Context()
			if tt.token != "" {
				ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tt.token)
			}
			err := calls[tt.method](ctx, tt.client)
			if got := status.Code(err); got != tt.want {
				t.Errorf("%s: %v, want %v", tt.method, err, tt.want)
			}
		})
	}
}

func TestAuthRulesCoverEveryMethod(t *testing.T) {
	rules, err := authRules()
	if err != nil {
		t.Fatal(err)
	}
	sd := indexv1.AdminService_ServiceDesc
	if n := len(sd.Methods) + len(sd.Streams) + 3; len(rules) != n {
		t.Errorf("%d rules for %d AdminService methods and IndexService's 3 writes", len(rules), n)
	}
	for m, s := range rules {
		want := "admin"
		switch {
		case strings.HasSuffix(m, "/GetStats") || strings.HasSuffix(m, "/ListKeys") || strings.HasSuffix(m, "/FindMissingPaths"):
			want = "read"
		case strings.HasPrefix(m, "/nixcache.index.v1.IndexService/"):
			want = "push"
		}
		if s.String() != want {
			t.Errorf("%s needs %s, want %s", m, s, want)
		}
	}
	for _, m := range []string{"PutNar", "PutPathInfo", "PutArtifact"} {
		if rules["/nixcache.index.v1.IndexService/"+m] != auth.Push {
			t.Errorf("IndexService/%s does not need push", m)
		}
	}
}

func TestPrivateReadNeedsAuthFile(t *testing.T) {
	_, err := newOps(Options{PrivateRead: true, Log: slog.New(slog.DiscardHandler)})
	if err == nil || !strings.Contains(err.Error(), "-auth-file") {
		t.Errorf("newOps = %v, want an error naming -auth-file", err)
	}
}

// stubIndex answers PutPathInfo and GetPathInfo with OK.
type stubIndex struct {
	indexv1.UnimplementedIndexServiceServer
}

func (stubIndex) PutPathInfo(context.Context, *indexv1.PutPathInfoRequest) (*indexv1.PutPathInfoResponse, error) {
	return &indexv1.PutPathInfoResponse{}, nil
}

func (stubIndex) GetPathInfo(context.Context, *indexv1.GetPathInfoRequest) (*indexv1.GetPathInfoResponse, error) {
	return &indexv1.GetPathInfoResponse{}, nil
}

func (stubIndex) PutNar(stream indexv1.IndexService_PutNarServer) error {
	return stream.SendAndClose(&indexv1.PutNarResponse{})
}

// TestIndexWritesNeedPush: the index checks the push scope of IndexService's
// writes itself, whatever the gateway let through; its reads are not
// checked.
func TestIndexWritesNeedPush(t *testing.T) {
	authFile := filepath.Join(t.TempDir(), "auth")
	if err := os.WriteFile(authFile, []byte("laptop read readtok\nci push,read pushtok\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	serve := func(o Options) indexv1.IndexServiceClient {
		p, err := newOps(o)
		if err != nil {
			t.Fatal(err)
		}
		lis := bufconn.Listen(1 << 20)
		srv := grpc.NewServer(p.serverOptions()...)
		indexv1.RegisterIndexServiceServer(srv, stubIndex{})
		go srv.Serve(lis)
		t.Cleanup(srv.Stop)
		cc, err := grpc.NewClient("passthrough:///bufnet",
			grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
			grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		return indexv1.NewIndexServiceClient(cc)
	}
	withTokens := serve(Options{AuthFile: authFile, Log: log})
	noTokens := serve(Options{Log: log})
	calls := map[string]func(context.Context, indexv1.IndexServiceClient) error{
		"PutPathInfo": func(ctx context.Context, c indexv1.IndexServiceClient) error {
			_, err := c.PutPathInfo(ctx, &indexv1.PutPathInfoRequest{})
			return err
		},
		"PutNar": func(ctx context.Context, c indexv1.IndexServiceClient) error {
			up, err := c.PutNar(ctx)
			if err != nil {
				return err
			}
			_, err = up.CloseAndRecv()
			return err
		},
		"GetPathInfo": func(ctx context.Context, c indexv1.IndexServiceClient) error {
			_, err := c.GetPathInfo(ctx, &indexv1.GetPathInfoRequest{})
			return err
		},
	}
	tests := []struct {
		name   string
		client indexv1.IndexServiceClient
		method string
		token  string
		want   codes.Code
	}{
		{"path info, anonymous", withTokens, "PutPathInfo", "", codes.Unauthenticated},
		{"path info, wrong token", withTokens, "PutPathInfo", "nope", codes.Unauthenticated},
		{"path info, read token", withTokens, "PutPathInfo", "readtok", codes.PermissionDenied},
		{"path info, push token", withTokens, "PutPathInfo", "pushtok", codes.OK},
		{"nar stream, anonymous", withTokens, "PutNar", "", codes.Unauthenticated},
		{"nar stream, read token", withTokens, "PutNar", "readtok", codes.PermissionDenied},
		{"nar stream, push token", withTokens, "PutNar", "pushtok", codes.OK},
		{"path info, no auth file", noTokens, "PutPathInfo", "pushtok", codes.Unauthenticated},
		{"read, anonymous", withTokens, "GetPathInfo", "", codes.OK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := t.Context()
			if tt.token != "" {
				ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tt.token)
			}
			if got := status.Code(calls[tt.method](ctx, tt.client)); got != tt.want {
				t.Errorf("%s: %v, want %v", tt.method, got, tt.want)
			}
		})
	}
}
