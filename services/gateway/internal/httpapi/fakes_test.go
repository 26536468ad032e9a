package httpapi

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/nixcache/nixcache/nix/nixbase32"
	"github.com/nixcache/nixcache/nix/nixhash"
	"github.com/nixcache/nixcache/platform/auth"
	"github.com/nixcache/nixcache/platform/grpcutil"
	"github.com/nixcache/nixcache/platform/logging"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
)

// fakeChunk is the chunk size of the fake index's NAR streams: small, so
// that tests cross chunk boundaries.
const fakeChunk = 1000

// storedFile is a NAR file the fake index holds.
type storedFile struct {
	data        []byte
	compression string
}

// putNarCall is what one PutNar call received.
type putNarCall struct {
	header *indexv1.PutNarHeader
	data   []byte
	chunks []int // chunk sizes
}

// putArtifactCall is what one PutArtifact call received.
type putArtifactCall struct {
	header *indexv1.PutArtifactHeader
	data   []byte
}

// fakeIndex is an in-memory IndexService.
type fakeIndex struct {
	indexv1.UnimplementedIndexServiceServer

	mu        sync.Mutex
	files     map[string]storedFile        // by "sha256:<nix32>" file hash
	paths     map[string]*indexv1.PathInfo // by hash part
	storeNars map[string][]byte            // uncompressed NAR by hash part
	err       error                        // when set, every call fails with it
	putErr    error                        // when set, PutNar fails with it after reading
	stall     bool                         // GetNar stops after one chunk until canceled
	noHeader  bool                         // GetNar waits for cancellation before its header
	cutAfter  int                          // when > 0, GetNar fails after sending about this many bytes
	presign   string                       // StatNar with presign answers this URL (+ the file hash); "": none
	putNars   []putNarCall
	// putArtifacts are the PutArtifact calls that completed.
	putArtifacts []putArtifactCall
	putInfos     []*indexv1.PathInfo
	getNars      []*indexv1.GetNarRequest
	statNars     []*indexv1.StatNarRequest
	// downloads are the RecordDownloads reports received.
	downloads []*indexv1.NarDownloads
	relPaths  map[string]string // StatNar's relative_path, by file hash
	requestID string            // of the last call

	streamDone chan struct{} // closed when a stalled GetNar's context ends

	// putStall makes PutNar read nothing (putStall < 0) or every chunk
	// but answer nothing (putStall > 0) until canceled; putStallDone is
	// closed when its context ends.
	putStall     int
	putStallDone chan struct{}
}

func newFakeIndex() *fakeIndex {
	return &fakeIndex{
		files:      map[string]storedFile{},
		paths:      map[string]*indexv1.PathInfo{},
		storeNars:  map[string][]byte{},
		relPaths:   map[string]string{},
		streamDone: make(chan struct{}),

		putStallDone: make(chan struct{}),
	}
}

func (f *fakeIndex) begin(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requestID = logging.RequestID(ctx)
	return f.err
}

func (f *fakeIndex) GetPathInfo(ctx context.Context, req *indexv1.GetPathInfoRequest) (*indexv1.GetPathInfoResponse, error) {
	if err := f.begin(ctx); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	info, ok := f.paths[req.GetHashPart()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "no store path with hash part %s", req.GetHashPart())
	}
	return &indexv1.GetPathInfoResponse{Info: info}, nil
}

func (f *fakeIndex) StatNar(ctx context.Context, req *indexv1.StatNarRequest) (*indexv1.StatNarResponse, error) {
	if err := f.begin(ctx); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.statNars = append(f.statNars, req)
	file, ok := f.files[req.GetFileHash()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "no NAR file %s", req.GetFileHash())
	}
	resp := &indexv1.StatNarResponse{File: &indexv1.NarFile{
		FileHash: req.GetFileHash(), FileSize: uint64(len(file.data)), Compression: file.compression,
	}, RelativePath: f.relPaths[req.GetFileHash()]}
	if req.GetPresign() && f.presign != "" {
		resp.Url = f.presign + req.GetFileHash()
	}
	return resp, nil
}

func (f *fakeIndex) RecordDownloads(ctx context.Context, req *indexv1.RecordDownloadsRequest) (*indexv1.RecordDownloadsResponse, error) {
	if err := f.begin(ctx); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.downloads = append(f.downloads, req.GetDownloads()...)
	return &indexv1.RecordDownloadsResponse{}, nil
}

func (f *fakeIndex) GetNar(req *indexv1.GetNarRequest, stream indexv1.IndexService_GetNarServer) error {
	ctx := stream.Context()
	if err := f.begin(ctx); err != nil {
		return err
	}
	f.mu.Lock()
	f.getNars = append(f.getNars, req)
	var data []byte
	compression := "none"
	found := false
	switch sel := req.GetSelector().(type) {
	case *indexv1.GetNarRequest_FileHash:
		file, ok := f.files[sel.FileHash]
		data, compression, found = file.data, file.compression, ok
	case *indexv1.GetNarRequest_StoreHash:
		data, found = f.storeNars[sel.StoreHash]
		if info := f.paths[sel.StoreHash]; found && req.GetExpectedNarHash() != "" && info.GetNarHash() != req.GetExpectedNarHash() {
			found = false
		}
	}
	stall, noHeader, cutAfter := f.stall, f.noHeader, f.cutAfter
	f.mu.Unlock()
	if noHeader {
		<-ctx.Done()
		return ctx.Err()
	}
	if !found {
		return status.Error(codes.NotFound, "no such NAR")
	}
	total := uint64(len(data))
	if stall {
		total = 1 << 40
	}
	if req.GetOffset() > total {
		return status.Errorf(codes.OutOfRange, "offset %d beyond %d bytes", req.GetOffset(), total)
	}
	if err := stream.Send(&indexv1.GetNarResponse{Msg: &indexv1.GetNarResponse_Header{Header: &indexv1.GetNarHeader{
		TotalSize: total, Compression: compression,
	}}}); err != nil {
		return err
	}
	if stall {
		if err := stream.Send(&indexv1.GetNarResponse{Msg: &indexv1.GetNarResponse_Chunk{Chunk: make([]byte, fakeChunk)}}); err != nil {
			return err
		}
		<-ctx.Done()
		close(f.streamDone)
		return ctx.Err()
	}
	data = data[req.GetOffset():]
	if n := req.GetLength(); n != 0 && n < uint64(len(data)) {
		data = data[:n]
	}
	sent := 0
	for len(data) > 0 {
		if cutAfter > 0 && sent >= cutAfter {
			return status.Error(codes.Internal, "fake index cut the NAR stream")
		}
		n := min(fakeChunk, len(data))
		chunk := bytes.Clone(data[:n])
		data = data[n:]
		if err := stream.Send(&indexv1.GetNarResponse{Msg: &indexv1.GetNarResponse_Chunk{Chunk: chunk}}); err != nil {
			return err
		}
		sent += n
	}
	return nil
}

// PutArtifact records a side file; it stores nothing to serve.
func (f *fakeIndex) PutArtifact(stream indexv1.IndexService_PutArtifactServer) error {
	if err := f.begin(stream.Context()); err != nil {
		return err
	}
	var call putArtifactCall
	for {
		msg, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if h := msg.GetHeader(); h != nil {
			call.header = h
			continue
		}
		call.data = append(call.data, msg.GetChunk()...)
	}
	f.mu.Lock()
	f.putArtifacts = append(f.putArtifacts, call)
	f.mu.Unlock()
	return stream.SendAndClose(&indexv1.PutArtifactResponse{Size: uint64(len(call.data))})
}

func (f *fakeIndex) PutNar(stream indexv1.IndexService_PutNarServer) error {
	if err := f.begin(stream.Context()); err != nil {
		return err
	}
	f.mu.Lock()
	putStall := f.putStall
	f.mu.Unlock()
	if putStall != 0 {
		for putStall > 0 {
			if _, err := stream.Recv(); err != nil {
				break
			}
		}
		<-stream.Context().Done()
		close(f.putStallDone)
		return stream.Context().Err()
	}
	var call putNarCall
	for {
		msg, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if h := msg.GetHeader(); h != nil {
			call.header = h
			continue
		}
		call.data = append(call.data, msg.GetChunk()...)
		call.chunks = append(call.chunks, len(msg.GetChunk()))
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.putNars = append(f.putNars, call)
	if f.putErr != nil {
		return f.putErr
	}
	sum := sha256.Sum256(call.data)
	return stream.SendAndClose(&indexv1.PutNarResponse{File: &indexv1.NarFile{
		FileHash: "sha256:" + nixbase32.EncodeToString(sum[:]), FileSize: uint64(len(call.data)),
	}})
}

func (f *fakeIndex) PutPathInfo(ctx context.Context, req *indexv1.PutPathInfoRequest) (*indexv1.PutPathInfoResponse, error) {
	if err := f.begin(ctx); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.putInfos = append(f.putInfos, req.GetInfo())
	return &indexv1.PutPathInfoResponse{Info: req.GetInfo()}, nil
}

// syncBuffer is a bytes.Buffer safe for concurrent log writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Tokens of the test token file.
const (
	pushToken = "push-secret-0123456789"
	readToken = "read-secret-0123456789"
)

const testTokenFile = `# test tokens
ci     read,push  ` + pushToken + `
reader read       ` + readToken + `
`

// env is a gateway over a fake index service.
type env struct {
	index *fakeIndex
	srv   *httptest.Server
	logs  *syncBuffer
	// narDir is the gateway's NarDir: addPath writes each file there too
	// and the fake index names it.
	narDir string
	h      *Handler
}

// newEnv starts a gateway; configure may change its Config.
func newEnv(t testing.TB, configure ...func(*Config)) *env {
	t.Helper()
	return newEnvServing(t, nil, configure...)
}

// newEnvServing is newEnv with the fake index served through serve(index)
// (a wrapper adding calls or hooks); nil serves it as it is.
func newEnvServing(t testing.TB, serve func(*fakeIndex) indexv1.IndexServiceServer, configure ...func(*Config)) *env {
	t.Helper()
	e := &env{
		index: newFakeIndex(),
		logs:  &syncBuffer{},
	}
	log := slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))

	lis := bufconn.Listen(1 << 20)
	gs := grpcutil.NewServer(log)
	var served indexv1.IndexServiceServer = e.index
	if serve != nil {
		served = serve(e.index)
	}
	indexv1.RegisterIndexServiceServer(gs.GRPC, served)
	go gs.GRPC.Serve(lis)
	t.Cleanup(gs.GRPC.Stop)
	// The writes forward the pusher's credentials, as in the gateway.
	conn, err := grpcutil.Dial("passthrough:///bufnet", append(auth.ForwardDialOptions(ForwardedMethods...),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			return lis.DialContext(ctx)
		}))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })

	tokens, err := auth.ParseTokens(strings.NewReader(testTokenFile), "test")
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		Index:               indexv1.NewIndexServiceClient(conn),
		Auth:                auth.Policy{Tokens: tokens, PublicRead: true},
		Log:                 log,
		StoreDir:            "/nix/store",
		Priority:            30,
		MaxNarinfoSize:      64 << 10,
		RequestTimeout:      10 * time.Second,
		TransferIdleTimeout: time.Minute,
	}
	for _, c := range configure {
		c(&cfg)
	}
	e.narDir = cfg.NarDir
	h, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.h = h
	// As the gateway serves it (app.Run): NAR files go out corked.
	e.srv = httptest.NewUnstartedServer(h)
	e.srv.Config.ConnContext = ConnContext
	e.srv.Start()
	t.Cleanup(e.srv.Close)
	return e
}

// request describes one HTTP request of a test.
type request struct {
	method string
	path   string
	body   []byte
	header map[string]string
	bearer string // sent as "Authorization: Bearer"
}

// response is what a test checks of an answer.
type response struct {
	code   int
	header http.Header
	body   []byte
}

// do sends req to the gateway.
func (e *env) do(t *testing.T, req request) response {
	t.Helper()
	var body io.Reader
	if req.body != nil {
		body = bytes.NewReader(req.body)
	}
	hr, err := http.NewRequest(req.method, e.srv.URL+req.path, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range req.header {
		hr.Header.Set(k, v)
	}
	if req.bearer != "" {
		hr.Header.Set("Authorization", "Bearer "+req.bearer)
	}
	resp, err := e.srv.Client().Do(hr)
	if err != nil {
		t.Fatalf("%s %s: %v", req.method, req.path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", req.method, req.path, err)
	}
	return response{code: resp.StatusCode, header: resp.Header, body: data}
}

// sha256Hash returns the "sha256:<nix32>" hash of data.
func sha256Hash(data []byte) nixhash.Hash {
	sum := sha256.Sum256(data)
	return nixhash.Hash{Algo: nixhash.SHA256, Digest: sum[:]}
}

// hashPart returns a valid store path hash part derived from seed.
func hashPart(seed string) string {
	sum := sha256.Sum256([]byte(seed))
	return nixbase32.EncodeToString(sum[:20])
}

// testPath is one store path the fake index holds, with its NAR file.
type testPath struct {
	hash     string // hash part
	nar      []byte // uncompressed NAR
	file     []byte // the stored file
	fileHash nixhash.Hash
	info     *indexv1.PathInfo
}

// addPath stores a path named name whose file is compressed with xz
// (bytes made up; the fake index never decompresses).
func (e *env) addPath(name string, size int) testPath {
	p := testPath{hash: hashPart(name), nar: pattern(name+"-nar", size), file: pattern(name+"-file", size/2+1)}
	p.fileHash = sha256Hash(p.file)
	p.info = &indexv1.PathInfo{
		StorePath:  "/nix/store/" + p.hash + "-" + name,
		NarHash:    sha256Hash(p.nar).String(),
		NarSize:    uint64(len(p.nar)),
		References: []string{hashPart("dep") + "-dep-1.0", p.hash + "-" + name},
		Deriver:    hashPart("drv") + "-" + name + ".drv",
		Signatures: []string{"cache-1:" + strings.Repeat("B", 86) + "=="},
		File: &indexv1.NarFile{
			FileHash: p.fileHash.String(), FileSize: uint64(len(p.file)), Compression: "xz",
			NarHash: sha256Hash(p.nar).String(), NarSize: uint64(len(p.nar)),
		},
		Url: "nar/" + p.fileHash.NixBase32() + ".nar.xz",
	}
	e.index.mu.Lock()
	defer e.index.mu.Unlock()
	if e.narDir != "" {
		// The index's layout: nars/<2 chars>/<file hash>.nar<ext>.
		rel := p.fileHash.NixBase32()[:2] + "/" + p.fileHash.NixBase32() + ".nar.xz"
		if err := os.MkdirAll(filepath.Join(e.narDir, p.fileHash.NixBase32()[:2]), 0o755); err != nil {
			panic(err)
		}
		if err := os.WriteFile(filepath.Join(e.narDir, rel), p.file, 0o644); err != nil {
			panic(err)
		}
		e.index.relPaths[p.fileHash.String()] = rel
	}
	e.index.paths[p.hash] = p.info
	e.index.files[p.fileHash.String()] = storedFile{data: p.file, compression: "xz"}
	e.index.storeNars[p.hash] = p.nar
	return p
}

// pattern returns size deterministic bytes derived from seed.
func pattern(seed string, size int) []byte {
	out := make([]byte, 0, size+sha256.Size)
	block := sha256.Sum256([]byte(seed))
	for len(out) < size {
		out = append(out, block[:]...)
		block = sha256.Sum256(block[:])
	}
	return out[:size]
}
