package server_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/nixcache/nixcache/nix/nixbase32"
	"github.com/nixcache/nixcache/nix/signature"
	"github.com/nixcache/nixcache/platform/auth"
	"github.com/nixcache/nixcache/platform/grpcutil"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	signerv1 "github.com/nixcache/nixcache/proto/nixcache/signer/v1"
	"github.com/nixcache/nixcache/services/index/internal/catalog"
	"github.com/nixcache/nixcache/services/index/internal/fakesigner"
	"github.com/nixcache/nixcache/services/index/internal/narstore"
	"github.com/nixcache/nixcache/services/index/internal/publish"
	"github.com/nixcache/nixcache/services/index/internal/server"
	"github.com/nixcache/nixcache/services/index/internal/signerclient"
)

const (
	storeDir    = "/nix/store"
	testMaxSize = 64 << 20
	signTimeout = 2 * time.Second
)

// testPushPattern is the metadata key under which a test calls the index
// as a push token limited to that pattern.
const testPushPattern = "test-push-pattern"

// index is a running index service over bufconn.
type index struct {
	dir    string
	client indexv1.IndexServiceClient
	cat    *catalog.Catalog
	// handlerDone receives the result of every finished streaming call.
	handlerDone chan error
	stop        func()
}

// signerConn is how the index reaches its signer in a test.
type signerConn struct {
	fake    *fakesigner.Signer // nil: the signer is down
	timeout time.Duration      // the sign timeout; 0: signTimeout
}

// startIndex runs the index on dir, its signer being sc.
func startIndex(t testing.TB, dir string, sc signerConn) *index {
	t.Helper()
	return startIndexWith(t, dir, sc, localSetup{storeDir: storeDir})
}

// Keys an uploader signs with, which every test index trusts
// (-trusted-sig-keys), and one it does not trust.
var (
	trustedKey   = mustKey("cache.example.org-1")
	trustedOther = mustKey("other.example.org-1")
	untrustedKey = mustKey("stranger.example.org-1")
)

func mustKey(name string) signature.SecretKey {
	k, err := signature.Generate(name)
	if err != nil {
		panic(err)
	}
	return k
}

// manyTrusted are more trusted keys than a path keeps signatures of.
var manyTrusted = func() []signature.SecretKey {
	var keys []signature.SecretKey
	for i := range publish.MaxForeignSigs + 3 {
		keys = append(keys, mustKey(fmt.Sprintf("many-%d", i)))
	}
	return keys
}()

func trustedKeys() []signature.PublicKey {
	keys := []signature.PublicKey{trustedKey.Public(), trustedOther.Public()}
	for _, k := range manyTrusted {
		keys = append(keys, k.Public())
	}
	return keys
}

// localSetup is the store directory of an index and, unless nil, how to
// make the local store it serves.
type localSetup struct {
	storeDir string
	newLocal func(*catalog.Catalog, *signerclient.Client) server.LocalStore
	// copies, unless nil, are the host copies served (after newLocal).
	copies func() server.HostCopies
	// spool, unless nil, holds spooled uploads (PutNar's spool_id).
	spool server.Spool
}

// startIndexWith runs the index on dir, its signer being sc, with ls.
func startIndexWith(t testing.TB, dir string, sc signerConn, ls localSetup) *index {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	cat, err := catalog.Open(filepath.Join(dir, "catalog.db"))
	if err != nil {
		t.Fatal(err)
	}
	nars, err := narstore.Open(dir, testMaxSize)
	if err != nil {
		t.Fatal(err)
	}

	signerLis := bufconn.Listen(1 << 20)
	if sc.fake != nil {
		sc.fake.Serve(t, signerLis)
	} else {
		signerLis.Close()
	}
	signerCC := dialBuf(t, signerLis)
	timeout := sc.timeout
	if timeout == 0 {
		timeout = signTimeout
	}
	signer := signerclient.New(signerv1.NewSignerServiceClient(signerCC))
	pub := publish.New(cat, signer, ls.storeDir, timeout).WithTrustedKeys(trustedKeys(), log)
	var local server.LocalStore
	if ls.newLocal != nil {
		local = ls.newLocal(cat, signer)
		if h, ok := local.(publish.HostStore); ok {
			pub.WithHost(h, nars)
		}
	}

	idx := &index{dir: dir, cat: cat, handlerDone: make(chan error, 100)}
	notify := grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		err := handler(srv, ss)
		idx.handlerDone <- err
		return err
	})
	// The identity the index's auth interceptor would put in the context,
	// from the test's metadata (TestPutPathInfoPushPattern).
	identify := grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if md, ok := metadata.FromIncomingContext(ctx); ok && len(md.Get(testPushPattern)) == 1 {
			ctx = auth.WithIdentity(ctx, auth.Identity{Name: "ci", Scopes: auth.Push, PushPattern: md.Get(testPushPattern)[0]})
		}
		return handler(ctx, req)
	})
	srv := grpcutil.NewServer(log, notify, identify, server.Codec())
	svc := server.New(log, cat, nars, pub, local)
	if ls.copies != nil {
		svc.WithHostCopies(ls.copies())
	}
	if ls.spool != nil {
		svc.WithSpool(ls.spool)
	}
	indexv1.RegisterIndexServiceServer(srv.GRPC, svc)
	lis := bufconn.Listen(1 << 20)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, lis, time.Second) }()
	cc := dialBuf(t, lis)
	idx.client = indexv1.NewIndexServiceClient(cc)

	stopped := false
	idx.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cc.Close()
		cancel()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
		signerCC.Close()
		if err := cat.Close(); err != nil {
			t.Errorf("close catalog: %v", err)
		}
	}
	t.Cleanup(idx.stop)
	return idx
}

func dialBuf(t testing.TB, lis *bufconn.Listener) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///bufconn",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// putNar uploads file in chunks after a header.
func putNar(ctx context.Context, c indexv1.IndexServiceClient, hdr *indexv1.PutNarHeader, file []byte) (*indexv1.NarFile, error) {
	stream, err := c.PutNar(ctx)
	if err != nil {
		return nil, err
	}
	if hdr != nil {
		if err := stream.Send(&indexv1.PutNarRequest{Msg: &indexv1.PutNarRequest_Header{Header: hdr}}); err != nil {
			return nil, recvErr(stream, err)
		}
	}
	for len(file) > 0 {
		n := min(len(file), grpcutil.ChunkSize)
		if err := stream.Send(&indexv1.PutNarRequest{Msg: &indexv1.PutNarRequest_Chunk{Chunk: file[:n]}}); err != nil {
			return nil, recvErr(stream, err)
		}
		file = file[n:]
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		return nil, err
	}
	return resp.GetFile(), nil
}

// recvErr is the server's status after Send failed with io.EOF.
func recvErr(stream indexv1.IndexService_PutNarClient, err error) error {
	if errors.Is(err, io.EOF) {
		_, err = stream.CloseAndRecv()
	}
	return err
}

func mustPutNar(t testing.TB, c indexv1.IndexServiceClient, file []byte) *indexv1.NarFile {
	t.Helper()
	nf, err := putNar(context.Background(), c, &indexv1.PutNarHeader{}, file)
	if err != nil {
		t.Fatalf("PutNar: %v", err)
	}
	return nf
}

// getNar reads a whole GetNar stream.
func getNar(ctx context.Context, c indexv1.IndexServiceClient, req *indexv1.GetNarRequest) (*indexv1.GetNarHeader, []byte, error) {
	stream, err := c.GetNar(ctx, req)
	if err != nil {
		return nil, nil, err
	}
	first, err := stream.Recv()
	if err != nil {
		return nil, nil, err
	}
	hdr := first.GetHeader()
	if hdr == nil {
		return nil, nil, errors.New("first GetNar message is not a header")
	}
	var data bytes.Buffer
	for {
		msg, err := stream.Recv()
		if err == io.EOF {
			return hdr, data.Bytes(), nil
		}
		if err != nil {
			return nil, nil, err
		}
		if len(msg.GetChunk()) > grpcutil.ChunkSize {
			return nil, nil, errors.New("chunk larger than grpcutil.ChunkSize")
		}
		if msg.GetHeader() != nil {
			return nil, nil, errors.New("second header")
		}
		data.Write(msg.GetChunk())
	}
}

// wantCode fails unless err has code and its message contains every part.
func wantCode(t testing.TB, err error, code codes.Code, parts ...string) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("error %v: code %s, want %s", err, status.Code(err), code)
	}
	for _, p := range parts {
		if !strings.Contains(status.Convert(err).Message(), p) {
			t.Errorf("error %q does not say %q", status.Convert(err).Message(), p)
		}
	}
}

// newStorePath returns a fresh absolute store path named name.
func newStorePath(name string) string {
	b := make([]byte, 20)
	rand.Read(b)
	return storeDir + "/" + nixbase32.EncodeToString(b) + "-" + name
}

func base(storePath string) string { return strings.TrimPrefix(storePath, storeDir+"/") }

func hashPart(storePath string) string { return base(storePath)[:32] }
