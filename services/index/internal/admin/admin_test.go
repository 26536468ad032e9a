package admin_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nixcache/nixcache/nix/nixbase32"
	"github.com/nixcache/nixcache/nix/nixhash"
	"github.com/nixcache/nixcache/nix/signature"
	"github.com/nixcache/nixcache/platform/grpcutil"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	signerv1 "github.com/nixcache/nixcache/proto/nixcache/signer/v1"
	"github.com/nixcache/nixcache/services/index/internal/admin"
	"github.com/nixcache/nixcache/services/index/internal/catalog"
	"github.com/nixcache/nixcache/services/index/internal/fakesigner"
	"github.com/nixcache/nixcache/services/index/internal/narstore"
	"github.com/nixcache/nixcache/services/index/internal/nartest"
	"github.com/nixcache/nixcache/services/index/internal/publish"
	"github.com/nixcache/nixcache/services/index/internal/server"
	"github.com/nixcache/nixcache/services/index/internal/signerclient"
)

const storeDir = "/nix/store"

// env is an index with its AdminService over bufconn.
type env struct {
	t       *testing.T
	dir     string
	index   indexv1.IndexServiceClient
	admin   indexv1.AdminServiceClient
	signer  *fakesigner.Signer
	tracker *admin.Tracker
	// clock is the time of downloads and of garbage collection.
	clock time.Time
	seed  uint64
}

func newEnv(t *testing.T) *env {
	t.Helper()
	dir := t.TempDir()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	cat, err := catalog.Open(filepath.Join(dir, "catalog.db"))
	if err != nil {
		t.Fatal(err)
	}
	nars, err := narstore.Open(dir, 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, dir: dir, signer: fakesigner.New(t, storeDir), clock: time.Now()}
	signerLis := bufconn.Listen(1 << 20)
	e.signer.Serve(t, signerLis)
	signerCC := dial(t, signerLis)
	signerRPC := signerv1.NewSignerServiceClient(signerCC)
	pub := publish.New(cat, signerclient.New(signerRPC), storeDir, 2*time.Second)

	e.tracker = admin.NewTracker(cat, log)
	e.tracker.Now = func() time.Time { return e.clock }
	srv := grpcutil.NewServer(log, e.tracker.Interceptors()...)
	indexSvc := server.New(log, cat, nars, pub, nil).WithDownloads(e.tracker)
	indexv1.RegisterIndexServiceServer(srv.GRPC, indexSvc)
	indexv1.RegisterAdminServiceServer(srv.GRPC, admin.New(admin.Config{StoreDir: storeDir, SignTimeout: 2 * time.Second,
		Log: log, Now: func() time.Time { return e.clock }}, cat, nars, signerRPC, e.tracker).WithPathChecker(indexSvc))
	lis := bufconn.Listen(1 << 20)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, lis, time.Second) }()
	cc := dial(t, lis)
	e.index, e.admin = indexv1.NewIndexServiceClient(cc), indexv1.NewAdminServiceClient(cc)
	t.Cleanup(func() {
		cc.Close()
		cancel()
		<-served
		cat.Close()
	})
	return e
}

func dial(t *testing.T, lis *bufconn.Listener) *grpc.ClientConn {
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

// push uploads a fresh NAR and publishes a new path named name referring
// to refs (absolute store paths); it returns the path.
func (e *env) push(name string, refs ...string) *indexv1.PathInfo {
	e.t.Helper()
	e.seed++
	data := nartest.Small(e.t, e.seed)
	ctx := context.Background()
	stream, err := e.index.PutNar(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	must(e.t, stream.Send(&indexv1.PutNarRequest{Msg: &indexv1.PutNarRequest_Header{Header: &indexv1.PutNarHeader{}}}))
	must(e.t, stream.Send(&indexv1.PutNarRequest{Msg: &indexv1.PutNarRequest_Chunk{Chunk: data}}))
	put, err := stream.CloseAndRecv()
	if err != nil {
		e.t.Fatalf("PutNar: %v", err)
	}
	b := make([]byte, 20)
	rand.Read(b)
	sp := storeDir + "/" + nixbase32.EncodeToString(b) + "-" + name
	var bases []string
	for _, r := range refs {
		bases = append(bases, strings.TrimPrefix(r, storeDir+"/"))
	}
	resp, err := e.index.PutPathInfo(ctx, &indexv1.PutPathInfoRequest{Info: &indexv1.PathInfo{
		StorePath: sp, NarHash: nartest.Hash(data).String(), NarSize: uint64(len(data)),
		References: bases, File: put.GetFile(),
	}})
	if err != nil {
		e.t.Fatalf("PutPathInfo %s: %v", sp, err)
	}
	return resp.GetInfo()
}

// download fetches the NAR of path at e.clock, as the gateway does.
func (e *env) download(info *indexv1.PathInfo) {
	e.t.Helper()
	stream, err := e.index.GetNar(context.Background(), &indexv1.GetNarRequest{
		Selector: &indexv1.GetNarRequest_FileHash{FileHash: info.GetFile().GetFileHash()}})
	if err != nil {
		e.t.Fatal(err)
	}
	for {
		if _, err := stream.Recv(); err == io.EOF {
			break
		} else if err != nil {
			e.t.Fatalf("GetNar %s: %v", info.GetStorePath(), err)
		}
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func wantCode(t *testing.T, err error, code codes.Code, parts ...string) {
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

func hashOf(storePath string) string { return strings.TrimPrefix(storePath, storeDir+"/")[:32] }

func (e *env) present(info *indexv1.PathInfo) bool {
	e.t.Helper()
	_, err := e.index.GetPathInfo(context.Background(), &indexv1.GetPathInfoRequest{HashPart: hashOf(info.GetStorePath())})
	if status.Code(err) == codes.NotFound {
		return false
	}
	must(e.t, err)
	return true
}

func TestListPaths(t *testing.T) {
	e := newEnv(t)
	var all []string
	for _, name := range []string{"hello-1", "hello-2", "world-1", "hello-3", "other"} {
		all = append(all, e.push(name).GetStorePath())
	}
	slices.Sort(all)
	ctx := context.Background()

	list := func(query string, size int32) []string {
		var got []string
		token := ""
		for pages := 0; ; pages++ {
			resp, err := e.admin.ListPaths(ctx, &indexv1.ListPathsRequest{Query: query, PageSize: size, PageToken: token})
			must(t, err)
			if size > 0 && len(resp.GetPaths()) > int(size) {
				t.Fatalf("page of %d paths, size %d", len(resp.GetPaths()), size)
			}
			for _, p := range resp.GetPaths() {
				got = append(got, p.GetStorePath())
				if p.GetSource() != indexv1.Source_SOURCE_PUSHED || p.GetFileSize() == 0 {
					t.Errorf("summary %v", p)
				}
			}
			if token = resp.GetNextPageToken(); token == "" {
				return got
			}
			if pages > 10 {
				t.Fatal("too many pages")
			}
		}
	}
	if got := list("", 2); !slices.Equal(got, all) {
		t.Errorf("pages of 2: %v, want %v", got, all)
	}
	if got := list("", 0); !slices.Equal(got, all) {
		t.Errorf("default page: %v, want %v", got, all)
	}
	var hellos []string
	for _, p := range all {
		if strings.Contains(p, "-hello-") {
			hellos = append(hellos, p)
		}
	}
	if got := list("hello", 1); !slices.Equal(got, hellos) || len(got) != 3 {
		t.Errorf("query hello: %v, want %v", got, hellos)
	}

	for _, tt := range []struct {
		name string
		req  *indexv1.ListPathsRequest
		part string
	}{
		{"negative size", &indexv1.ListPathsRequest{PageSize: -1}, "page_size"},
		{"size too big", &indexv1.ListPathsRequest{PageSize: 1001}, "page_size"},
		{"bad token", &indexv1.ListPathsRequest{PageToken: "nope"}, "page_token"},
		{"bad query", &indexv1.ListPathsRequest{Query: "a/b"}, "query"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := e.admin.ListPaths(ctx, tt.req)
			wantCode(t, err, codes.InvalidArgument, tt.part)
		})
	}
}

func TestGetPathAndStats(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	dep := e.push("dep")
	top := e.push("top", dep.GetStorePath())
	e.download(dep)
	// A co-located gateway's download: a StatNar saying so; a HEAD's
	// StatNar (no download) and a resumed range count no download.
	for _, req := range []*indexv1.StatNarRequest{
		{FileHash: dep.GetFile().GetFileHash(), Download: true},
		{FileHash: dep.GetFile().GetFileHash()},
		{FileHash: dep.GetFile().GetFileHash(), Download: true, Offset: 1},
	} {
		_, err := e.index.StatNar(ctx, req)
		must(t, err)
	}
	// Downloads a co-located gateway reports in a batch: two more, and
	// a time in the future counts as now.
	_, err := e.index.RecordDownloads(ctx, &indexv1.RecordDownloadsRequest{Downloads: []*indexv1.NarDownloads{{
		FileHash: dep.GetFile().GetFileHash(), Count: 2, Bytes: 2*dep.GetFile().GetFileSize() + 5,
		Last: timestamppb.New(e.clock.Add(time.Hour)),
	}}})
	must(t, err)
	for _, bad := range []struct {
		d    *indexv1.NarDownloads
		part string
	}{
		{&indexv1.NarDownloads{FileHash: "sha256:nope", Count: 1}, "downloads[1].file_hash"},
		{&indexv1.NarDownloads{StoreHash: "not-a-hash", Count: 1}, "downloads[1].store_hash"},
		{&indexv1.NarDownloads{FileHash: dep.GetFile().GetFileHash(), StoreHash: hashOf(top.GetStorePath())}, "both"},
	} {
		ok := &indexv1.NarDownloads{FileHash: dep.GetFile().GetFileHash(), Count: 1}
		_, err = e.index.RecordDownloads(ctx, &indexv1.RecordDownloadsRequest{Downloads: []*indexv1.NarDownloads{ok, bad.d}})
		wantCode(t, err, codes.InvalidArgument, bad.part)
	}
	// A NAR a gateway dumped from the host's store names its path.
	_, err = e.index.RecordDownloads(ctx, &indexv1.RecordDownloadsRequest{Downloads: []*indexv1.NarDownloads{{
		StoreHash: hashOf(top.GetStorePath()), Count: 1, Bytes: 7,
	}}})
	must(t, err)
	if _, err := e.index.GetPathInfo(ctx, &indexv1.GetPathInfoRequest{HashPart: hashOf(top.GetStorePath())}); err != nil {
		t.Fatal(err)
	}
	_, err = e.index.GetPathInfo(ctx, &indexv1.GetPathInfoRequest{HashPart: strings.Repeat("0", 32)})
	wantCode(t, err, codes.NotFound)

	for _, arg := range []string{dep.GetStorePath(), hashOf(dep.GetStorePath()), strings.TrimPrefix(dep.GetStorePath(), storeDir+"/")} {
		resp, err := e.admin.GetPath(ctx, &indexv1.GetPathRequest{Path: arg})
		must(t, err)
		if resp.GetInfo().GetStorePath() != dep.GetStorePath() || resp.GetDownloads() != 4 ||
			!slices.Equal(resp.GetReferrers(), []string{top.GetStorePath()}) ||
			resp.GetSummary().GetLastAccess().AsTime().Unix() != e.clock.Unix() {
			t.Errorf("GetPath(%s) = %v", arg, resp)
		}
	}
	if resp, err := e.admin.GetPath(ctx, &indexv1.GetPathRequest{Path: top.GetStorePath()}); err != nil || resp.GetDownloads() != 1 {
		t.Errorf("GetPath(top) = %v, %v; want the one download reported by store hash", resp, err)
	}
	for _, tt := range []struct {
		arg  string
		code codes.Code
	}{
		{"", codes.InvalidArgument},
		{"not a path", codes.InvalidArgument},
		{"/other/store/" + strings.TrimPrefix(dep.GetStorePath(), storeDir+"/"), codes.InvalidArgument},
		{strings.Repeat("0", 32), codes.NotFound},
	} {
		_, err := e.admin.GetPath(ctx, &indexv1.GetPathRequest{Path: tt.arg})
		wantCode(t, err, tt.code)
	}

	st, err := e.admin.GetStats(ctx, &indexv1.GetStatsRequest{})
	must(t, err)
	want := dep.GetFile().GetFileSize() + top.GetFile().GetFileSize()
	if st.GetPaths() != 2 || st.GetPushedPaths() != 2 || st.GetStoredBytes() != want || st.GetNarBytes() != dep.GetNarSize()+top.GetNarSize() ||
		st.GetNarinfoHits() != 1 || st.GetNarinfoMisses() != 1 || st.GetNarDownloads() != 5 || st.GetNarBytesServed() != 5*dep.GetFile().GetFileSize()+11 {
		t.Errorf("stats %v", st)
	}
}

func TestDeletePath(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	dep := e.push("dep")
	mid := e.push("mid", dep.GetStorePath())
	top := e.push("top", mid.GetStorePath(), dep.GetStorePath())
	other := e.push("other")

	_, err := e.admin.DeletePath(ctx, &indexv1.DeletePathRequest{Path: dep.GetStorePath()})
	wantCode(t, err, codes.FailedPrecondition, mid.GetStorePath(), top.GetStorePath())

	dry, err := e.admin.DeletePath(ctx, &indexv1.DeletePathRequest{Path: dep.GetStorePath(), WithReferrers: true, DryRun: true})
	must(t, err)
	want := []string{top.GetStorePath(), mid.GetStorePath(), dep.GetStorePath()}
	if !slices.Equal(dry.GetDeleted(), want) {
		t.Errorf("dry run deleted %v, want referrers first: %v", dry.GetDeleted(), want)
	}
	if !e.present(dep) || !e.present(top) {
		t.Fatal("the dry run deleted")
	}
	file := filepath.Join(e.dir, "nars")
	real, err := e.admin.DeletePath(ctx, &indexv1.DeletePathRequest{Path: dep.GetStorePath(), WithReferrers: true})
	must(t, err)
	if !slices.Equal(real.GetDeleted(), dry.GetDeleted()) || real.GetFreedBytes() != dry.GetFreedBytes() ||
		real.GetFreedBytes() != dep.GetFile().GetFileSize()+mid.GetFile().GetFileSize()+top.GetFile().GetFileSize() {
		t.Errorf("deleted %v (%d bytes), dry run %v (%d bytes)", real.GetDeleted(), real.GetFreedBytes(), dry.GetDeleted(), dry.GetFreedBytes())
	}
	for _, p := range []*indexv1.PathInfo{dep, mid, top} {
		if e.present(p) {
			t.Errorf("%s still served", p.GetStorePath())
		}
		_, err := e.index.StatNar(ctx, &indexv1.StatNarRequest{FileHash: p.GetFile().GetFileHash()})
		wantCode(t, err, codes.NotFound)
	}
	if !e.present(other) {
		t.Error("an unrelated path was deleted")
	}
	if n := countFiles(t, file); n != 1 {
		t.Errorf("%d NAR files on disk, want 1", n)
	}
	_, err = e.admin.DeletePath(ctx, &indexv1.DeletePathRequest{Path: dep.GetStorePath()})
	wantCode(t, err, codes.NotFound)
}

func countFiles(t *testing.T, dir string) int {
	t.Helper()
	n := 0
	err := filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			n++
		}
		return err
	})
	must(t, err)
	return n
}

// gc runs CollectGarbage and returns the paths it deleted, checking the
// stream's running totals.
func (e *env) gc(req *indexv1.CollectGarbageRequest) ([]string, *indexv1.CollectGarbageResponse) {
	e.t.Helper()
	stream, err := e.admin.CollectGarbage(context.Background(), req)
	must(e.t, err)
	var deleted []string
	for {
		msg, err := stream.Recv()
		if err != nil {
			e.t.Fatalf("CollectGarbage: %v", err)
		}
		if msg.GetDone() {
			if msg.GetDeleted() != uint64(len(deleted)) {
				e.t.Errorf("summary says %d deleted, stream listed %d", msg.GetDeleted(), len(deleted))
			}
			return deleted, msg
		}
		deleted = append(deleted, msg.GetStorePath())
		if msg.GetDeleted() != uint64(len(deleted)) {
			e.t.Errorf("running count %d, want %d", msg.GetDeleted(), len(deleted))
		}
	}
}

// closure is a top path and its one dependency.
type closure struct{ top, dep *indexv1.PathInfo }

func (e *env) pushClosure(name string) closure {
	dep := e.push(name + "-dep")
	return closure{top: e.push(name, dep.GetStorePath()), dep: dep}
}

// checkClosed fails unless every served path's references are served.
func (e *env) checkClosed(paths ...*indexv1.PathInfo) {
	e.t.Helper()
	for _, p := range paths {
		if !e.present(p) {
			continue
		}
		for _, ref := range p.GetReferences() {
			_, err := e.index.GetPathInfo(context.Background(), &indexv1.GetPathInfoRequest{HashPart: ref[:32]})
			if err != nil {
				e.t.Errorf("%s kept but its reference %s: %v", p.GetStorePath(), ref, err)
			}
		}
	}
}

func TestCollectGarbageBySize(t *testing.T) {
	e := newEnv(t)
	start := e.clock
	a, b, c := e.pushClosure("a"), e.pushClosure("b"), e.pushClosure("c")
	// A dependency shared by an old and a recent path stays with the recent.
	shared := e.push("shared")
	old := e.push("old", shared.GetStorePath())
	recent := e.push("recent", shared.GetStorePath())
	pinned := e.pushClosure("pinned")
	_, err := e.admin.Pin(context.Background(), &indexv1.PinRequest{Path: pinned.top.GetStorePath(), Closure: true})
	must(t, err)

	// Downloads: a at +1h, c at +2h, old at +3h, b at +4h, recent at +5h.
	for i, p := range []*indexv1.PathInfo{a.top, c.top, old, b.top, recent} {
		e.clock = start.Add(time.Duration(i+1) * time.Hour)
		e.download(p)
	}
	size := func(ps ...*indexv1.PathInfo) (n uint64) {
		for _, p := range ps {
			n += p.GetFile().GetFileSize()
		}
		return n
	}
	// Keep the pinned closure, b, recent and shared: a, c and old go.
	limit := size(pinned.top, pinned.dep, b.top, b.dep, recent, shared)
	dry, drySum := e.gc(&indexv1.CollectGarbageRequest{DryRun: true, MaxTotalSize: limit})
	want := []string{a.top.GetStorePath(), a.dep.GetStorePath(), c.top.GetStorePath(), c.dep.GetStorePath(), old.GetStorePath()}
	if !slices.Equal(dry, want) {
		t.Errorf("dry run deletes %v, want (least recent first, referrers first) %v", dry, want)
	}
	if !e.present(a.dep) {
		t.Fatal("the dry run deleted")
	}
	got, sum := e.gc(&indexv1.CollectGarbageRequest{MaxTotalSize: limit})
	if !slices.Equal(got, dry) || sum.GetTotalFreedBytes() != drySum.GetTotalFreedBytes() || sum.GetKeptBytes() != limit {
		t.Errorf("deleted %v (%v), dry run %v (%v)", got, sum, dry, drySum)
	}
	all := []*indexv1.PathInfo{a.top, a.dep, b.top, b.dep, c.top, c.dep, shared, old, recent, pinned.top, pinned.dep}
	for _, p := range all {
		if e.present(p) == slices.Contains(got, p.GetStorePath()) {
			t.Errorf("%s: present %v after GC", p.GetStorePath(), e.present(p))
		}
	}
	e.checkClosed(all...)

	// A limit below the pinned closure keeps it whole.
	got, _ = e.gc(&indexv1.CollectGarbageRequest{MaxTotalSize: 1})
	if !e.present(pinned.top) || !e.present(pinned.dep) || len(got) != 4 {
		t.Errorf("GC to 1 byte deleted %v", got)
	}
	pins, err := e.admin.ListPins(context.Background(), &indexv1.ListPinsRequest{})
	must(t, err)
	if len(pins.GetPins()) != 1 || pins.GetPins()[0].GetStorePath() != pinned.top.GetStorePath() || !pins.GetPins()[0].GetClosure() {
		t.Errorf("pins %v", pins)
	}
	_, err = e.admin.Unpin(context.Background(), &indexv1.UnpinRequest{Path: pinned.top.GetStorePath()})
	must(t, err)
	_, err = e.admin.Unpin(context.Background(), &indexv1.UnpinRequest{Path: pinned.top.GetStorePath()})
	wantCode(t, err, codes.NotFound)
	got, _ = e.gc(&indexv1.CollectGarbageRequest{MaxTotalSize: 1})
	if want := []string{pinned.top.GetStorePath(), pinned.dep.GetStorePath()}; !slices.Equal(got, want) {
		t.Errorf("after unpinning, GC deleted %v, want %v", got, want)
	}
}

func TestCollectGarbageByAge(t *testing.T) {
	e := newEnv(t)
	start := e.clock
	never := e.pushClosure("never")
	early, late := e.pushClosure("early"), e.pushClosure("late")
	pinnedPath := e.push("pinned")
	_, err := e.admin.Pin(context.Background(), &indexv1.PinRequest{Path: hashOf(pinnedPath.GetStorePath())})
	must(t, err)
	e.clock = start.Add(10 * time.Hour)
	e.download(early.top)
	e.clock = start.Add(72 * time.Hour)
	e.download(late.dep) // the top, never downloaded, is as old as registered
	e.clock = start.Add(80 * time.Hour)

	got, _ := e.gc(&indexv1.CollectGarbageRequest{MaxAge: durationpb.New(60 * time.Hour)})
	want := []string{never.top.GetStorePath(), never.dep.GetStorePath(), early.top.GetStorePath(), early.dep.GetStorePath(), late.top.GetStorePath()}
	if !sameSet(got, want) {
		t.Errorf("deleted %v, want %v", got, want)
	}
	for _, c := range []closure{never, early} {
		if slices.Index(got, c.top.GetStorePath()) > slices.Index(got, c.dep.GetStorePath()) {
			t.Errorf("deleted %v: %s before its referrer", got, c.dep.GetStorePath())
		}
	}
	if !e.present(late.dep) || !e.present(pinnedPath) {
		t.Error("a recent or pinned path was deleted")
	}
	_, err = e.admin.CollectGarbage(context.Background(), &indexv1.CollectGarbageRequest{MaxAge: durationpb.New(-time.Hour)})
	if err == nil {
		stream, _ := e.admin.CollectGarbage(context.Background(), &indexv1.CollectGarbageRequest{MaxAge: durationpb.New(-time.Hour)})
		_, err = stream.Recv()
	}
	wantCode(t, err, codes.InvalidArgument, "max_age")
}

func TestVerifyQuarantines(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	good, bad := e.push("good"), e.push("bad")
	h, err := nixhash.Parse(bad.GetFile().GetFileHash())
	must(t, err)
	name := filepath.Join(e.dir, "nars", h.NixBase32()[:2], h.NixBase32()+".nar")
	data, err := os.ReadFile(name)
	must(t, err)
	data[len(data)/2] ^= 0x40
	must(t, os.WriteFile(name, data, 0o644))

	stream, err := e.admin.Verify(ctx, &indexv1.VerifyRequest{})
	must(t, err)
	var msgs []*indexv1.VerifyResponse
	for {
		msg, err := stream.Recv()
		if err == io.EOF {
			break
		}
		must(t, err)
		msgs = append(msgs, msg)
	}
	if len(msgs) != 3 || !msgs[2].GetDone() || msgs[2].GetBad() != 1 || msgs[2].GetChecked() != 2 {
		t.Fatalf("Verify sent %v", msgs)
	}
	for _, m := range msgs[:2] {
		isBad := m.GetStorePath() == bad.GetStorePath()
		if m.GetOk() == isBad || isBad && !strings.Contains(m.GetProblem(), "hash") {
			t.Errorf("Verify says %v", m)
		}
	}
	if e.present(bad) || !e.present(good) {
		t.Errorf("after Verify: bad served %v, good served %v", e.present(bad), e.present(good))
	}
	_, err = e.index.StatNar(ctx, &indexv1.StatNarRequest{FileHash: bad.GetFile().GetFileHash()})
	wantCode(t, err, codes.NotFound)
	check, err := e.index.CheckPaths(ctx, &indexv1.CheckPathsRequest{HashParts: []string{hashOf(bad.GetStorePath()), hashOf(good.GetStorePath())}})
	must(t, err)
	if !slices.Equal(check.GetPresent(), []string{hashOf(good.GetStorePath())}) {
		t.Errorf("CheckPaths: %v", check.GetPresent())
	}
	gs, err := e.admin.GetPath(ctx, &indexv1.GetPathRequest{Path: bad.GetStorePath()})
	must(t, err)
	if !gs.GetSummary().GetQuarantined() {
		t.Errorf("GetPath of the bad path: %v", gs.GetSummary())
	}
	st, err := e.admin.GetStats(ctx, &indexv1.GetStatsRequest{})
	must(t, err)
	if st.GetQuarantinedPaths() != 1 {
		t.Errorf("stats %v", st)
	}
	// Deleting the quarantined path removes it and its file.
	_, err = e.admin.DeletePath(ctx, &indexv1.DeletePathRequest{Path: bad.GetStorePath()})
	must(t, err)
	if _, err := os.Stat(name); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("quarantined file still on disk: %v", err)
	}
}

// TestVerifyLongerFile: bytes appended to a stored file are found, though
// reading the recorded length would hash right.
func TestVerifyLongerFile(t *testing.T) {
	e := newEnv(t)
	p := e.push("longer")
	h, err := nixhash.Parse(p.GetFile().GetFileHash())
	must(t, err)
	name := filepath.Join(e.dir, "nars", h.NixBase32()[:2], h.NixBase32()+".nar")
	f, err := os.OpenFile(name, os.O_APPEND|os.O_WRONLY, 0)
	must(t, err)
	_, err = f.Write([]byte("trailing garbage"))
	must(t, err)
	must(t, f.Close())

	stream, err := e.admin.Verify(context.Background(), &indexv1.VerifyRequest{})
	must(t, err)
	first, err := stream.Recv()
	must(t, err)
	if first.GetOk() || !strings.Contains(first.GetProblem(), "bytes, not") {
		t.Errorf("Verify of a file with bytes appended: %v", first)
	}
}

func TestKeys(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	paths := []*indexv1.PathInfo{e.push("one"), e.push("two")}
	keys, err := e.admin.ListKeys(ctx, &indexv1.ListKeysRequest{})
	must(t, err)
	if len(keys.GetKeys()) != 2 || keys.GetKeys()[0].GetName() != "test-cache-1" || !keys.GetKeys()[0].GetActive() {
		t.Fatalf("keys %v", keys)
	}

	addStream, err := e.admin.AddKey(ctx, &indexv1.AddKeyRequest{Name: "test-cache-2"})
	must(t, err)
	var last *indexv1.AddKeyResponse
	for {
		msg, err := addStream.Recv()
		if err == io.EOF {
			break
		}
		must(t, err)
		if msg.GetKey().GetName() != "test-cache-2" {
			t.Errorf("AddKey message %v", msg)
		}
		last = msg
	}
	if !last.GetDone() || last.GetResigned() != 2 || last.GetTotal() != 2 {
		t.Errorf("last AddKey message %v", last)
	}
	newKey, _ := e.signer.Key("test-cache-2")
	oldKey := e.signer.Active
	verifies := func(key signature.SecretKey, p *indexv1.PathInfo) bool {
		resp, err := e.index.GetPathInfo(ctx, &indexv1.GetPathInfoRequest{HashPart: hashOf(p.GetStorePath())})
		must(t, err)
		info := resp.GetInfo()
		h, _ := nixhash.Parse(info.GetNarHash())
		fp := signature.Fingerprint(storeDir, info.GetStorePath(), h, info.GetNarSize(), info.GetReferences())
		for _, sig := range info.GetSignatures() {
			if key.Public().Verify(fp, sig) {
				return true
			}
		}
		return false
	}
	for _, p := range paths {
		if !verifies(newKey, p) || !verifies(oldKey, p) {
			t.Errorf("%s after AddKey: new key %v, old key %v", p.GetStorePath(), verifies(newKey, p), verifies(oldKey, p))
		}
	}
	_, err = recvAll(e.admin.AddKey(ctx, &indexv1.AddKeyRequest{Name: "test-cache-2"}))
	wantCode(t, err, codes.AlreadyExists)
	_, err = recvAll(e.admin.AddKey(ctx, &indexv1.AddKeyRequest{Name: ""}))
	wantCode(t, err, codes.InvalidArgument)

	_, err = recvAll(e.admin.RetireKey(ctx, &indexv1.RetireKeyRequest{Name: "test-cache-1"}))
	must(t, err)
	for _, p := range paths {
		if !verifies(newKey, p) || verifies(oldKey, p) {
			t.Errorf("%s after RetireKey: new key %v, old key %v", p.GetStorePath(), verifies(newKey, p), verifies(oldKey, p))
		}
	}
	_, err = recvAll(e.admin.RetireKey(ctx, &indexv1.RetireKeyRequest{Name: "test-cache-2"}))
	wantCode(t, err, codes.FailedPrecondition)
	_, err = recvAll(e.admin.RetireKey(ctx, &indexv1.RetireKeyRequest{Name: "no-such-key"}))
	wantCode(t, err, codes.NotFound)
}

// recvAll reads a server stream to its end and returns its error.
func recvAll[T any](stream interface{ Recv() (T, error) }, err error) (int, error) {
	if err != nil {
		return 0, err
	}
	n := 0
	for {
		if _, err := stream.Recv(); err == io.EOF {
			return n, nil
		} else if err != nil {
			return n, err
		}
		n++
	}
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// TestBackup: the copy Backup streams, in many messages, is a catalogue
// with every path and pin.
func TestBackup(t *testing.T) {
	defer admin.SetBackupChunk(4096)()
	e := newEnv(t)
	ctx := context.Background()
	dep := e.push("dep")
	top := e.push("top", dep.GetStorePath())
	if _, err := e.admin.Pin(ctx, &indexv1.PinRequest{Path: top.GetStorePath()}); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	n, err := admin.WriteBackup(ctx, e.admin, &buf)
	if err != nil {
		t.Fatalf("WriteBackup: %v", err)
	}
	if n != int64(buf.Len()) || n == 0 {
		t.Fatalf("WriteBackup wrote %d bytes, says %d", buf.Len(), n)
	}
	path := filepath.Join(t.TempDir(), "catalog.db")
	must(t, os.WriteFile(path, buf.Bytes(), 0o600))
	restored, err := catalog.Open(path)
	if err != nil {
		t.Fatalf("open the copy: %v", err)
	}
	defer restored.Close()
	for _, want := range []*indexv1.PathInfo{dep, top} {
		got, err := restored.PathInfo(hashOf(want.GetStorePath()))
		if err != nil {
			t.Fatalf("%s in the copy: %v", want.GetStorePath(), err)
		}
		if got.GetNarHash() != want.GetNarHash() || !slices.Equal(got.GetSignatures(), want.GetSignatures()) || len(got.GetSignatures()) == 0 {
			t.Errorf("%s in the copy: %v, want %v", want.GetStorePath(), got, want)
		}
	}
	pins, err := restored.Pins()
	if err != nil || len(pins) != 1 || pins[0].GetStorePath() != top.GetStorePath() {
		t.Errorf("pins in the copy: %v, %v; want %s", pins, err, top.GetStorePath())
	}
}

// TestVerifyQuarantinesReferrers: the paths that refer to a path Verify
// quarantines, directly or not, are quarantined with it: nothing is
// served whose closure is not.
func TestVerifyQuarantinesReferrers(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	c := e.pushClosure("app")
	above := e.push("above", c.top.GetStorePath())
	other := e.push("other")
	h, err := nixhash.Parse(c.dep.GetFile().GetFileHash())
	must(t, err)
	name := filepath.Join(e.dir, "nars", h.NixBase32()[:2], h.NixBase32()+".nar")
	data, err := os.ReadFile(name)
	must(t, err)
	data[len(data)/2] ^= 0x40
	must(t, os.WriteFile(name, data, 0o644))

	stream, err := e.admin.Verify(ctx, &indexv1.VerifyRequest{Paths: []string{c.dep.GetStorePath()}})
	must(t, err)
	for {
		_, err := stream.Recv()
		if err == io.EOF {
			break
		}
		must(t, err)
	}
	for _, p := range []*indexv1.PathInfo{c.dep, c.top, above} {
		if e.present(p) {
			t.Errorf("%s served after Verify quarantined what it refers to", p.GetStorePath())
		}
		gp, err := e.admin.GetPath(ctx, &indexv1.GetPathRequest{Path: p.GetStorePath()})
		if err != nil || !gp.GetSummary().GetQuarantined() {
			t.Errorf("GetPath(%s): %v, %v; want it listed as quarantined", p.GetStorePath(), gp.GetSummary(), err)
		}
	}
	if !e.present(other) {
		t.Errorf("an unrelated path went with them")
	}
	e.checkClosed(c.dep, c.top, above, other)
}
