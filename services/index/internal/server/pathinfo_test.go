package server_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	"github.com/nixcache/nixcache/nix/compression"
	"github.com/nixcache/nixcache/nix/nixhash"
	"github.com/nixcache/nixcache/nix/signature"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/fakesigner"
	"github.com/nixcache/nixcache/services/index/internal/nartest"
	"github.com/nixcache/nixcache/services/index/internal/publish"
)

func fakeSigner(t testing.TB) *fakesigner.Signer { return fakesigner.New(t, storeDir) }

// pathInfo is the narinfo of storePath served from nf, as the gateway
// would pass it on.
func pathInfo(storePath string, nf *indexv1.NarFile, refs ...string) *indexv1.PathInfo {
	return &indexv1.PathInfo{
		StorePath:  storePath,
		NarHash:    nf.GetNarHash(),
		NarSize:    nf.GetNarSize(),
		References: refs,
		File:       &indexv1.NarFile{FileHash: nf.GetFileHash(), FileSize: nf.GetFileSize(), Compression: nf.GetCompression()},
		Url:        "nar/whatever-the-uploader-said.nar",
	}
}

func mustPublish(t testing.TB, c indexv1.IndexServiceClient, info *indexv1.PathInfo) *indexv1.PathInfo {
	t.Helper()
	resp, err := c.PutPathInfo(context.Background(), &indexv1.PutPathInfoRequest{Info: info})
	if err != nil {
		t.Fatalf("PutPathInfo(%s): %v", info.GetStorePath(), err)
	}
	return resp.GetInfo()
}

func fingerprint(t testing.TB, info *indexv1.PathInfo) string {
	t.Helper()
	h, err := nixhash.Parse(info.GetNarHash())
	if err != nil {
		t.Fatal(err)
	}
	return signature.Fingerprint(storeDir, info.GetStorePath(), h, info.GetNarSize(), info.GetReferences())
}

func assertPublished(t testing.TB, c indexv1.IndexServiceClient, storePath string, want bool) {
	t.Helper()
	_, err := c.GetPathInfo(context.Background(), &indexv1.GetPathInfoRequest{HashPart: hashPart(storePath)})
	switch {
	case want && err != nil:
		t.Errorf("GetPathInfo(%s): %v, want it published", storePath, err)
	case !want && err == nil:
		t.Errorf("%s is published, want it absent", storePath)
	case !want:
		wantCode(t, err, codes.NotFound)
	}
	resp, err := c.CheckPaths(context.Background(), &indexv1.CheckPathsRequest{HashParts: []string{hashPart(storePath)}})
	if err != nil {
		t.Fatalf("CheckPaths: %v", err)
	}
	if got := len(resp.GetPresent()) == 1; got != want {
		t.Errorf("CheckPaths(%s) = %v, want present=%v", storePath, resp.GetPresent(), want)
	}
}

func TestPutPathInfo(t *testing.T) {
	fake := fakeSigner(t)
	idx := startIndex(t, t.TempDir(), signerConn{fake: fake})
	depFile := mustPutNar(t, idx.client, nartest.Compress(t, compression.XZ, nartest.Small(t, 20)))
	mainFile := mustPutNar(t, idx.client, nartest.Compress(t, compression.Zstd, nartest.Small(t, 21)))

	dep := newStorePath("dep-1.0")
	start := time.Now()
	depInfo := mustPublish(t, idx.client, pathInfo(dep, depFile))
	if len(depInfo.GetSignatures()) != 1 || !fake.Active.Public().Verify(fingerprint(t, depInfo), depInfo.GetSignatures()[0]) {
		t.Errorf("signatures %v: want one by %s that verifies", depInfo.GetSignatures(), fake.Active.Name)
	}
	if want := "nar/" + strings.TrimPrefix(depFile.GetFileHash(), "sha256:") + ".nar.xz"; depInfo.GetUrl() != want {
		t.Errorf("url %q, want %q", depInfo.GetUrl(), want)
	}
	if rt := depInfo.GetRegistrationTime().AsTime(); rt.Before(start.Add(-time.Second)) || rt.After(time.Now().Add(time.Second)) {
		t.Errorf("registration_time %v, want about now", rt)
	}
	assertNarFile(t, depInfo.GetFile(), depFile)

	// The main path: references itself and dep, names its NarHash in SRI
	// form, and comes with signatures: by a trusted foreign key (kept), by
	// an untrusted one (dropped), and valid ones by the signer's own keys
	// (replaced by the signer's).
	sp := newStorePath("main-2.0")
	in := pathInfo(sp, mainFile, base(sp), base(dep))
	narHash, _ := nixhash.Parse(mainFile.GetNarHash())
	in.NarHash = narHash.SRI()
	in.Deriver = base(newStorePath("main-2.0.drv"))
	in.Ca = ""
	fp := fingerprint(t, in)
	foreignSig := trustedKey.Sign(fp)
	in.Signatures = []string{foreignSig, untrustedKey.Sign(fp), fake.Inactive.Sign(fp), fake.Active.Sign(fp)}
	got := mustPublish(t, idx.client, in)

	if got.GetNarHash() != mainFile.GetNarHash() {
		t.Errorf("nar_hash %q, want it normalised to %q", got.GetNarHash(), mainFile.GetNarHash())
	}
	wantSigs := []string{fake.Active.Sign(fp), foreignSig}
	if !equalStrings(got.GetSignatures(), wantSigs) {
		t.Errorf("signatures %q, want %q", got.GetSignatures(), wantSigs)
	}
	if got.GetDeriver() != in.GetDeriver() || len(got.GetReferences()) != 2 || got.GetStorePath() != sp || got.GetNarSize() != mainFile.GetNarSize() {
		t.Errorf("published %v, from %v", got, in)
	}
	if !strings.HasSuffix(got.GetUrl(), ".nar.zst") {
		t.Errorf("url %q, want a .nar.zst", got.GetUrl())
	}
	stored, err := idx.client.GetPathInfo(context.Background(), &indexv1.GetPathInfoRequest{HashPart: hashPart(sp)})
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(stored.GetInfo(), got) {
		t.Errorf("GetPathInfo:\n got %v\nwant %v", stored.GetInfo(), got)
	}

	// CheckPaths: only the published ones, in order, once.
	absent := hashPart(newStorePath("absent"))
	cp, err := idx.client.CheckPaths(context.Background(), &indexv1.CheckPathsRequest{HashParts: []string{hashPart(sp), absent, hashPart(dep), hashPart(sp)}})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{hashPart(sp), hashPart(dep)}; !equalStrings(cp.GetPresent(), want) {
		t.Errorf("CheckPaths = %v, want %v", cp.GetPresent(), want)
	}

	// Published again with a new foreign signature: merged, not re-signed.
	calls := fake.Calls.Load()
	in.Signatures = []string{trustedOther.Sign(fp)}
	again := mustPublish(t, idx.client, in)
	if want := append(wantSigs, trustedOther.Sign(fp)); !equalStrings(again.GetSignatures(), want) {
		t.Errorf("signatures after re-publishing %q, want %q", again.GetSignatures(), want)
	}
	if fake.Calls.Load() != calls {
		t.Errorf("re-publishing called the signer")
	}
	if !proto.Equal(again.GetRegistrationTime(), got.GetRegistrationTime()) {
		t.Errorf("re-publishing changed registration_time")
	}

	// Published again with another NAR: refused, the first one stays.
	conflict := pathInfo(sp, depFile)
	_, err = idx.client.PutPathInfo(context.Background(), &indexv1.PutPathInfoRequest{Info: conflict})
	wantCode(t, err, codes.AlreadyExists, "already published")
	stored, err = idx.client.GetPathInfo(context.Background(), &indexv1.GetPathInfoRequest{HashPart: hashPart(sp)})
	if err != nil || stored.GetInfo().GetNarHash() != mainFile.GetNarHash() {
		t.Errorf("after a conflicting publish: %v, %v", stored.GetInfo(), err)
	}
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestPutPathInfoRefused(t *testing.T) {
	fake := fakeSigner(t)
	idx := startIndex(t, t.TempDir(), signerConn{fake: fake})
	file := mustPutNar(t, idx.client, nartest.Compress(t, compression.XZ, nartest.Small(t, 30)))
	otherFile := mustPutNar(t, idx.client, nartest.Small(t, 31))
	notUploaded := nartest.Hash([]byte("never uploaded")).String()
	missingRef := base(newStorePath("missing"))

	tests := []struct {
		name   string
		change func(in *indexv1.PathInfo)
		code   codes.Code
		parts  []string
	}{
		{"store path outside the store", func(in *indexv1.PathInfo) { in.StorePath = "/tmp/" + base(in.StorePath) },
			codes.InvalidArgument, []string{"StorePath", "not in the store"}},
		{"store path bad name", func(in *indexv1.PathInfo) { in.StorePath += "/x" }, codes.InvalidArgument, []string{"StorePath"}},
		{"NarHash garbage", func(in *indexv1.PathInfo) { in.NarHash = "sha256:0000" }, codes.InvalidArgument, []string{"NarHash"}},
		{"NarHash md5", func(in *indexv1.PathInfo) { in.NarHash = "md5:" + strings.Repeat("0", 32) }, codes.InvalidArgument, []string{"sha256"}},
		{"NarSize 0", func(in *indexv1.PathInfo) { in.NarSize = 0 }, codes.InvalidArgument, []string{"NarSize"}},
		{"bad reference", func(in *indexv1.PathInfo) { in.References = []string{"../../etc/passwd"} }, codes.InvalidArgument, []string{"References"}},
		{"bad deriver", func(in *indexv1.PathInfo) { in.Deriver = "/nix/store/x.drv" }, codes.InvalidArgument, []string{"Deriver"}},
		{"no file hash", func(in *indexv1.PathInfo) { in.File = nil }, codes.InvalidArgument, []string{"FileHash"}},
		{"bad file hash", func(in *indexv1.PathInfo) { in.File.FileHash = "sha256:!" }, codes.InvalidArgument, []string{"FileHash"}},
		{"file not uploaded", func(in *indexv1.PathInfo) { in.File.FileHash = notUploaded },
			codes.FailedPrecondition, []string{"the NAR file " + notUploaded + " named by the narinfo has not been uploaded"}},
		{"compression mismatch", func(in *indexv1.PathInfo) { in.File.Compression = compression.Bzip2 }, codes.InvalidArgument, []string{"Compression mismatch"}},
		{"file size mismatch", func(in *indexv1.PathInfo) { in.File.FileSize++ }, codes.InvalidArgument, []string{"FileSize mismatch"}},
		{"NarHash mismatch", func(in *indexv1.PathInfo) { in.NarHash = otherFile.GetNarHash() },
			codes.InvalidArgument, []string{"NarHash mismatch: narinfo says " + otherFile.GetNarHash() + ", the uploaded NAR hashes to " + file.GetNarHash()}},
		{"NarSize mismatch", func(in *indexv1.PathInfo) { in.NarSize++ }, codes.InvalidArgument, []string{"NarSize mismatch"}},
		{"reference not published", func(in *indexv1.PathInfo) { in.References = []string{base(in.StorePath), missingRef} },
			codes.FailedPrecondition, []string{"reference " + missingRef + " is not in the cache"}},
		{"malformed signature", func(in *indexv1.PathInfo) { in.Signatures = []string{"cache.example.org-1:bm90IGEgc2lnbmF0dXJl"} },
			codes.InvalidArgument, []string{"Sig"}},
		{"signature without key name", func(in *indexv1.PathInfo) { in.Signatures = []string{"nocolon"} }, codes.InvalidArgument, []string{"Sig"}},
		{"forged signature", func(in *indexv1.PathInfo) {
			// A valid signature by our key, of another path.
			in.Signatures = []string{fake.Active.Sign(fingerprint(t, pathInfo(newStorePath("other"), file)))}
		}, codes.InvalidArgument, []string{"forged signature", fake.Active.Name}},
		{"forged signature by an inactive key", func(in *indexv1.PathInfo) {
			in.Signatures = []string{fake.Inactive.Sign("1;forged")}
		}, codes.InvalidArgument, []string{"forged signature", fake.Inactive.Name}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := pathInfo(newStorePath("refused"), file)
			sp := in.GetStorePath()
			tt.change(in)
			_, err := idx.client.PutPathInfo(context.Background(), &indexv1.PutPathInfoRequest{Info: in})
			wantCode(t, err, tt.code, tt.parts...)
			assertPublished(t, idx.client, sp, false)
		})
	}
	t.Run("no info", func(t *testing.T) {
		_, err := idx.client.PutPathInfo(context.Background(), &indexv1.PutPathInfoRequest{})
		wantCode(t, err, codes.InvalidArgument)
	})
	if n := fake.Calls.Load(); n != 0 {
		t.Errorf("the signer signed %d times for refused paths", n)
	}
}

func TestPutPathInfoSignerFailing(t *testing.T) {
	hanging := fakeSigner(t)
	hanging.Hang.Store(true)
	tests := []struct {
		name string
		sc   signerConn
		sigs bool
	}{
		{"down", signerConn{}, false},
		{"down, with signatures to check", signerConn{}, true},
		{"hanging", signerConn{fake: hanging, timeout: 200 * time.Millisecond}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			idx := startIndex(t, t.TempDir(), tt.sc)
			file := mustPutNar(t, idx.client, nartest.Small(t, 40))
			in := pathInfo(newStorePath("unsigned"), file)
			if tt.sigs {
				k, _ := signature.Generate("cache.example.org-1")
				in.Signatures = []string{k.Sign(fingerprint(t, in))}
			}
			_, err := idx.client.PutPathInfo(context.Background(), &indexv1.PutPathInfoRequest{Info: in})
			wantCode(t, err, codes.Unavailable, "signer unavailable")
			assertPublished(t, idx.client, in.GetStorePath(), false)
		})
	}
}

func TestLookupRefused(t *testing.T) {
	idx := startIndex(t, t.TempDir(), signerConn{})
	for _, h := range []string{"", "short", strings.Repeat("e", 32), strings.Repeat("0", 33)} {
		_, err := idx.client.GetPathInfo(context.Background(), &indexv1.GetPathInfoRequest{HashPart: h})
		wantCode(t, err, codes.InvalidArgument, "hash_part")
		_, err = idx.client.CheckPaths(context.Background(), &indexv1.CheckPathsRequest{HashParts: []string{hashPart(newStorePath("ok")), h}})
		wantCode(t, err, codes.InvalidArgument, "hash_parts[1]")
	}
	many := make([]string, 10001)
	for i := range many {
		many[i] = strings.Repeat("0", 32)
	}
	_, err := idx.client.CheckPaths(context.Background(), &indexv1.CheckPathsRequest{HashParts: many})
	wantCode(t, err, codes.InvalidArgument, "at most 10000")
	resp, err := idx.client.CheckPaths(context.Background(), &indexv1.CheckPathsRequest{HashParts: many[:10000]})
	if err != nil || len(resp.GetPresent()) != 0 {
		t.Errorf("CheckPaths of 10000 absent: %v, %v", resp.GetPresent(), err)
	}
}

// TestRestart: everything survives closing and reopening the index on
// the same data directory.
func TestRestart(t *testing.T) {
	dir := t.TempDir()
	fake := fakeSigner(t)
	idx := startIndex(t, dir, signerConn{fake: fake})
	narData := nartest.Small(t, 50)
	file := nartest.Compress(t, compression.XZ, narData)
	nf := mustPutNar(t, idx.client, file)
	sp := newStorePath("survivor")
	published := mustPublish(t, idx.client, pathInfo(sp, nf))
	idx.stop()

	// Restarted with the signer down: serving needs no signer.
	idx = startIndex(t, dir, signerConn{})
	got, err := idx.client.GetPathInfo(context.Background(), &indexv1.GetPathInfoRequest{HashPart: hashPart(sp)})
	if err != nil {
		t.Fatalf("GetPathInfo after restart: %v", err)
	}
	if !proto.Equal(got.GetInfo(), published) {
		t.Errorf("after restart:\n got %v\nwant %v", got.GetInfo(), published)
	}
	st, err := idx.client.StatNar(context.Background(), &indexv1.StatNarRequest{FileHash: nf.GetFileHash()})
	if err != nil {
		t.Fatalf("StatNar after restart: %v", err)
	}
	assertNarFile(t, st.GetFile(), nf)
	_, data, err := getNar(context.Background(), idx.client, &indexv1.GetNarRequest{Selector: &indexv1.GetNarRequest_StoreHash{StoreHash: hashPart(sp)}})
	if err != nil || string(data) != string(narData) {
		t.Errorf("GetNar after restart: %d bytes, %v", len(data), err)
	}
	assertPublished(t, idx.client, sp, true)
}

// TestPutPathInfoForeignSignatures: an uploader's signatures are kept only
// when they verify against a trusted key, at most publish.MaxForeignSigs a
// path however many pushes bring; untrusted, forged and excess ones are
// dropped without failing the push, so that no sequence of pushes makes
// the record grow without bound.
func TestPutPathInfoForeignSignatures(t *testing.T) {
	fake := fakeSigner(t)
	idx := startIndex(t, t.TempDir(), signerConn{fake: fake})
	file := mustPutNar(t, idx.client, nartest.Compress(t, compression.Zstd, nartest.Small(t, 30)))
	in := pathInfo(newStorePath("foreign-1.0"), file)
	fp := fingerprint(t, in)

	// Hostile: 1,800 lines by an untrusted key and a forged one by a
	// trusted key, beside one good trusted signature.
	var sigs []string
	for i := range 1800 {
		sigs = append(sigs, untrustedKey.Sign(fmt.Sprintf("%s;%d", fp, i)))
	}
	forged := trustedOther.Sign(fp + "x")
	sigs = append(sigs, forged, trustedKey.Sign(fp))
	in.Signatures = sigs
	got := mustPublish(t, idx.client, in)
	if want := []string{fake.Active.Sign(fp), trustedKey.Sign(fp)}; !equalStrings(got.GetSignatures(), want) {
		t.Errorf("signatures %d %q, want %q", len(got.GetSignatures()), got.GetSignatures(), want)
	}

	// Many trusted keys, pushed one at a time: the path keeps
	// MaxForeignSigs of them and the pushes past that still succeed.
	for _, k := range manyTrusted {
		in.Signatures = []string{k.Sign(fp)}
		got = mustPublish(t, idx.client, in)
	}
	foreign := 0
	for _, s := range got.GetSignatures() {
		if !strings.HasPrefix(s, fake.Active.Name+":") {
			foreign++
		}
	}
	if foreign != publish.MaxForeignSigs || len(got.GetSignatures()) != publish.MaxForeignSigs+1 {
		t.Errorf("%d signatures, %d foreign, want %d foreign and ours", len(got.GetSignatures()), foreign, publish.MaxForeignSigs)
	}
}

// TestPutPathInfoPushPattern: a token limited to some store-path names
// publishes those and no other, whatever the gateway let through.
func TestPutPathInfoPushPattern(t *testing.T) {
	idx := startIndex(t, t.TempDir(), signerConn{fake: fakeSigner(t)})
	file := mustPutNar(t, idx.client, nartest.Small(t, 40))
	ctx := metadata.AppendToOutgoingContext(context.Background(), testPushPattern, "*-myproject-*")

	other := pathInfo(newStorePath("hello-2.12"), file)
	_, err := idx.client.PutPathInfo(ctx, &indexv1.PutPathInfoRequest{Info: other})
	wantCode(t, err, codes.PermissionDenied, "*-myproject-*", "hello-2.12")
	assertPublished(t, idx.client, other.GetStorePath(), false)

	mine := pathInfo(newStorePath("lib-myproject-1.0"), file)
	if _, err := idx.client.PutPathInfo(ctx, &indexv1.PutPathInfoRequest{Info: mine}); err != nil {
		t.Fatalf("a path the pattern names: %v", err)
	}
	assertPublished(t, idx.client, mine.GetStorePath(), true)
}
