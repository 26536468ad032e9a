package app_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/nixcache/nixcache/nix/compression"
	"github.com/nixcache/nixcache/platform/grpcutil"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/app"
	"github.com/nixcache/nixcache/services/index/internal/catalog"
	"github.com/nixcache/nixcache/services/index/internal/fakesigner"
	"github.com/nixcache/nixcache/services/index/internal/nartest"
)

func options(dir, signerAddr string) app.Options {
	return app.Options{
		DataDir:       dir,
		SignerAddr:    signerAddr,
		StoreDir:      "/nix/store",
		MaxNarSize:    1 << 20,
		SignTimeout:   5 * time.Second,
		ShutdownGrace: time.Second,
		Log:           slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return lis
}

// pushToken is the token of the clients start returns.
const pushToken = "app-test-push-token"

// start runs the index until the returned stop is called; stop returns
// Run's error. Without an o.AuthFile it gets one, and the client sends a
// push token with every call, as the gateway forwards its caller's.
func start(t *testing.T, o app.Options) (indexv1.IndexServiceClient, func() error) {
	t.Helper()
	if o.AuthFile == "" {
		o.AuthFile = filepath.Join(t.TempDir(), "auth")
		if err := os.WriteFile(o.AuthFile, []byte("pusher push,read "+pushToken+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	lis := listen(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- app.Run(ctx, o, lis) }()
	withToken := func(ctx context.Context) context.Context {
		return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+pushToken)
	}
	cc, err := grpcutil.Dial(lis.Addr().String(),
		grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			return invoker(withToken(ctx), method, req, reply, cc, opts...)
		}),
		grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			return streamer(withToken(ctx), desc, cc, method, opts...)
		}))
	if err != nil {
		t.Fatal(err)
	}
	stop := func() error {
		cc.Close()
		cancel()
		return <-done
	}
	return indexv1.NewIndexServiceClient(cc), stop
}

func TestRunServesAndRestarts(t *testing.T) {
	fake := fakesigner.New(t, "/nix/store")
	signerLis := listen(t)
	fake.Serve(t, signerLis)
	dir := filepath.Join(t.TempDir(), "index") // Run creates it
	o := options(dir, signerLis.Addr().String())

	client, stop := start(t, o)
	file := nartest.Compress(t, compression.XZ, nartest.Small(t, 1))
	up, err := client.PutNar(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	up.Send(&indexv1.PutNarRequest{Msg: &indexv1.PutNarRequest_Header{Header: &indexv1.PutNarHeader{}}})
	up.Send(&indexv1.PutNarRequest{Msg: &indexv1.PutNarRequest_Chunk{Chunk: file}})
	put, err := up.CloseAndRecv()
	if err != nil {
		t.Fatalf("PutNar: %v", err)
	}
	nf := put.GetFile()
	sp := "/nix/store/" + strings.Repeat("1", 32) + "-app-test"
	_, err = client.PutPathInfo(context.Background(), &indexv1.PutPathInfoRequest{Info: &indexv1.PathInfo{
		StorePath: sp, NarHash: nf.GetNarHash(), NarSize: nf.GetNarSize(),
		File: &indexv1.NarFile{FileHash: nf.GetFileHash()},
	}})
	if err != nil {
		t.Fatalf("PutPathInfo: %v", err)
	}
	if err := stop(); err != nil {
		t.Fatalf("Run after shutdown: %v", err)
	}

	stale := filepath.Join(dir, "tmp", "upload-stale")
	if err := os.WriteFile(stale, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Run again on the same directory: it must have closed the catalogue
	// (bbolt would time out on its lock otherwise) and kept everything.
	client, stop = start(t, o)
	got, err := client.GetPathInfo(context.Background(), &indexv1.GetPathInfoRequest{HashPart: strings.Repeat("1", 32)})
	if err != nil {
		t.Fatalf("GetPathInfo after restart: %v", err)
	}
	if got.GetInfo().GetStorePath() != sp || len(got.GetInfo().GetSignatures()) != 1 {
		t.Errorf("after restart: %v", got.GetInfo())
	}
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale upload left in tmp/: %v", err)
	}
	if err := stop(); err != nil {
		t.Fatalf("Run after shutdown: %v", err)
	}
}

func TestRunRefusesBadOptions(t *testing.T) {
	tests := []struct {
		name   string
		change func(*app.Options)
		want   string
	}{
		{"no data dir", func(o *app.Options) { o.DataDir = "" }, "-data-dir"},
		{"relative store dir", func(o *app.Options) { o.StoreDir = "nix/store" }, "-store-dir"},
		{"no size limit", func(o *app.Options) { o.MaxNarSize = 0 }, "-max-nar-size"},
		{"no sign timeout", func(o *app.Options) { o.SignTimeout = 0 }, "-sign-timeout"},
		{"host NAR copies of another compression", func(o *app.Options) {
			o.LocalStore, o.HostNarCompression = true, "xz"
		}, `-host-nar-compression "xz"`},
		{"upstream key without upstream", func(o *app.Options) {
			o.UpstreamKeys = []string{"cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="}
		}, "-upstream-key without -upstream"},
		{"upstream without key", func(o *app.Options) {
			o.Upstreams = []string{"https://cache.nixos.org"}
			o.UpstreamTimeout, o.UpstreamFetchTimeout = time.Second, time.Minute
		}, "needs at least one -upstream-key"},
		{"bad upstream key", func(o *app.Options) {
			o.Upstreams = []string{"https://cache.nixos.org"}
			o.UpstreamKeys = []string{"cache.nixos.org-1:notbase64"}
			o.UpstreamTimeout, o.UpstreamFetchTimeout = time.Second, time.Minute
		}, "-upstream-key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := options(t.TempDir(), "127.0.0.1:1")
			tt.change(&o)
			lis := listen(t)
			err := app.Run(context.Background(), o, lis)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Run: %v, want an error naming %s", err, tt.want)
			}
			if _, err := lis.Accept(); err == nil {
				t.Errorf("the listener is still open")
			}
		})
	}
}

// TestRunRefusesUnservableLocalStore: with -local-store, a store
// directory that cannot be read or a daemon that does not answer stops
// the index at startup, with a message naming the flag.
func TestRunRefusesUnservableLocalStore(t *testing.T) {
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	if err := os.Mkdir(store, 0o755); err != nil {
		t.Fatal(err)
	}
	notDir := filepath.Join(dir, "file")
	if err := os.WriteFile(notDir, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	// A socket nobody answers on: a listener that is closed at once.
	dead := filepath.Join(dir, "dead.socket")
	l, err := net.Listen("unix", dead)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()

	tests := []struct {
		name   string
		change func(*app.Options)
		want   []string
	}{
		{"missing store directory", func(o *app.Options) { o.StoreDir = filepath.Join(dir, "missing") }, []string{"-store-dir", "no such file"}},
		{"store directory is a file", func(o *app.Options) { o.StoreDir = notDir }, []string{"-store-dir", "not a directory"}},
		{"missing socket", func(o *app.Options) { o.NixDaemonSocket = filepath.Join(dir, "missing.socket") }, []string{"-nix-daemon-socket", "no such file"}},
		{"nobody listening", func(o *app.Options) { o.NixDaemonSocket = dead }, []string{"-nix-daemon-socket", "connection refused"}},
		{"no socket", func(o *app.Options) { o.NixDaemonSocket = "" }, []string{"-nix-daemon-socket is empty"}},
		{"no sync interval", func(o *app.Options) { o.LocalSyncInterval = 0 }, []string{"-local-sync-interval"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := options(t.TempDir(), "127.0.0.1:1")
			o.LocalStore = true
			o.StoreDir = store
			o.NixDaemonSocket = filepath.Join(dir, "missing.socket")
			o.NixDB = filepath.Join(dir, "db.sqlite")
			o.LocalSyncInterval = time.Second
			tt.change(&o)
			lis := listen(t)
			err := app.Run(context.Background(), o, lis)
			for _, w := range tt.want {
				if err == nil || !strings.Contains(err.Error(), w) {
					t.Errorf("Run: %v, want an error saying %q", err, w)
				}
			}
			if _, err := lis.Accept(); err == nil {
				t.Errorf("the listener is still open")
			}
		})
	}
}

// TestRunClosesWhatItOpened: when a step of the start-up fails after the
// catalogue was opened, Run still closes it and the listener.
func TestRunClosesWhatItOpened(t *testing.T) {
	dir := t.TempDir()
	dead := filepath.Join(dir, "dead.socket")
	l, err := net.Listen("unix", dead)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	tests := []struct {
		name   string
		change func(*app.Options)
		want   string
	}{
		{"private reads without tokens", func(o *app.Options) { o.PrivateRead = true }, "-auth-file"},
		{"daemon not answering", func(o *app.Options) {
			o.LocalStore = true
			o.StoreDir = dir
			o.NixDaemonSocket = dead
			o.NixDB = filepath.Join(dir, "db.sqlite")
			o.LocalSyncInterval = time.Second
		}, "-nix-daemon-socket"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := options(t.TempDir(), "127.0.0.1:1")
			tt.change(&o)
			lis := listen(t)
			if err := app.Run(context.Background(), o, lis); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Run: %v, want an error saying %q", err, tt.want)
			}
			if _, err := lis.Accept(); err == nil {
				t.Errorf("the listener is still open")
			}
			// bbolt's lock is held until the catalogue is closed.
			cat, err := catalog.Open(filepath.Join(o.DataDir, "catalog.db"))
			if err != nil {
				t.Fatalf("the catalogue is still open: %v", err)
			}
			if err := cat.Close(); err != nil {
				t.Fatal(err)
			}
		})
	}
}
