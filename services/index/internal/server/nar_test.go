package server_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/nixcache/nixcache/nix/compression"
	"github.com/nixcache/nixcache/platform/grpcutil"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/nartest"
)

func TestPutNar(t *testing.T) {
	idx := startIndex(t, t.TempDir(), signerConn{})
	// Several chunks of data.
	narData := nartest.Build(t, 10, nartest.File{Name: "f", Contents: bytes.Repeat([]byte("nixcache "), 200000)})
	for _, comp := range []string{compression.None, compression.XZ, compression.Zstd} {
		t.Run(comp, func(t *testing.T) {
			file := nartest.Compress(t, comp, narData)
			hdr := &indexv1.PutNarHeader{ExpectedFileHash: nartest.Hash(file).String(), ExpectedCompression: comp}
			got, err := putNar(context.Background(), idx.client, hdr, file)
			if err != nil {
				t.Fatalf("PutNar: %v", err)
			}
			want := &indexv1.NarFile{
				FileHash:    nartest.Hash(file).String(),
				FileSize:    uint64(len(file)),
				Compression: comp,
				NarHash:     nartest.Hash(narData).String(),
				NarSize:     uint64(len(narData)),
			}
			assertNarFile(t, got, want)
			for _, key := range []string{want.FileHash, strings.TrimPrefix(want.FileHash, "sha256:")} {
				st, err := idx.client.StatNar(context.Background(), &indexv1.StatNarRequest{FileHash: key})
				if err != nil {
					t.Fatalf("StatNar(%s): %v", key, err)
				}
				assertNarFile(t, st.GetFile(), want)
				// A co-located gateway opens nars/<relative_path> itself.
				rel := st.GetRelativePath()
				if rel == "" || filepath.IsAbs(rel) || filepath.Clean(rel) != rel || strings.Contains(rel, "..") {
					t.Fatalf("StatNar(%s): relative_path %q is not a clean relative path", key, rel)
				}
				fi, err := os.Stat(filepath.Join(idx.dir, "nars", filepath.FromSlash(rel)))
				if err != nil {
					t.Fatal(err)
				}
				if fi.Mode().Perm() != 0o640 {
					t.Fatalf("nars/%s: mode %v, want 0640 (the gateway's group reads it)", rel, fi.Mode())
				}
				onDisk, err := os.ReadFile(filepath.Join(idx.dir, "nars", filepath.FromSlash(rel)))
				if err != nil {
					t.Fatalf("StatNar(%s): relative_path %q: %v", key, rel, err)
				}
				if !bytes.Equal(onDisk, file) {
					t.Fatalf("StatNar(%s): nars/%s holds %d bytes, not the %d uploaded", key, rel, len(onDisk), len(file))
				}
			}
		})
	}
}

func assertNarFile(t *testing.T, got, want *indexv1.NarFile) {
	t.Helper()
	if got.GetFileHash() != want.GetFileHash() || got.GetFileSize() != want.GetFileSize() ||
		got.GetCompression() != want.GetCompression() || got.GetNarHash() != want.GetNarHash() ||
		got.GetNarSize() != want.GetNarSize() {
		t.Errorf("NarFile:\n got %v\nwant %v", got, want)
	}
}

func TestPutNarRefused(t *testing.T) {
	idx := startIndex(t, t.TempDir(), signerConn{})
	narData := nartest.Small(t, 11)
	xzFile := nartest.Compress(t, compression.XZ, narData)
	bomb := nartest.Compress(t, compression.Zstd, nartest.Build(t, 12, nartest.File{Name: "zeros", Contents: make([]byte, testMaxSize)}))

	tests := []struct {
		name  string
		hdr   *indexv1.PutNarHeader
		file  []byte
		parts []string
	}{
		{"no header", nil, narData, []string{"first message must be a header"}},
		{"bad expected hash", &indexv1.PutNarHeader{ExpectedFileHash: "sha256:nope"}, narData, []string{"expected_file_hash"}},
		{"unknown compression", &indexv1.PutNarHeader{ExpectedCompression: "gzip"}, narData, []string{"gzip"}},
		{"empty", &indexv1.PutNarHeader{}, nil, []string{"empty upload"}},
		{"not a NAR", &indexv1.PutNarHeader{}, []byte("GET / HTTP/1.1\r\n\r\n"), []string{"not a NAR"}},
		{"truncated NAR", &indexv1.PutNarHeader{}, narData[:len(narData)/2], []string{"invalid NAR"}},
		{"truncated xz", &indexv1.PutNarHeader{}, xzFile[:len(xzFile)/2], []string{"decompress xz"}},
		{"wrong file hash", &indexv1.PutNarHeader{ExpectedFileHash: nartest.Hash(narData).String()}, xzFile,
			[]string{"file hash mismatch: the URL names " + nartest.Hash(narData).String() + " but the uploaded file hashes to " + nartest.Hash(xzFile).String()}},
		{"wrong compression", &indexv1.PutNarHeader{ExpectedCompression: compression.Zstd}, xzFile, []string{"compression mismatch"}},
		{"decompression bomb", &indexv1.PutNarHeader{}, bomb, []string{"exceeds the limit of 67108864 bytes"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := putNar(context.Background(), idx.client, tt.hdr, tt.file)
			wantCode(t, err, codes.InvalidArgument, tt.parts...)
			if tmp, _ := os.ReadDir(filepath.Join(idx.dir, "tmp")); len(tmp) != 0 {
				t.Errorf("tmp/ holds %d files", len(tmp))
			}
		})
	}
	if nars, _ := os.ReadDir(filepath.Join(idx.dir, "nars")); len(nars) != 0 {
		t.Errorf("nars/ holds %d entries after refused uploads only", len(nars))
	}
}

func TestPutNarSecondHeader(t *testing.T) {
	idx := startIndex(t, t.TempDir(), signerConn{})
	stream, err := idx.client.PutNar(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	narData := nartest.Small(t, 13)
	for _, msg := range []*indexv1.PutNarRequest{
		{Msg: &indexv1.PutNarRequest_Header{Header: &indexv1.PutNarHeader{}}},
		{Msg: &indexv1.PutNarRequest_Chunk{Chunk: narData[:100]}},
		{Msg: &indexv1.PutNarRequest_Header{Header: &indexv1.PutNarHeader{}}},
	} {
		if err := stream.Send(msg); err != nil {
			break
		}
	}
	_, err = stream.CloseAndRecv()
	wantCode(t, err, codes.InvalidArgument, "second header")
}

// TestPutNarCancelled: a client that goes away mid-upload leaves no temp
// file and no record.
func TestPutNarCancelled(t *testing.T) {
	idx := startIndex(t, t.TempDir(), signerConn{})
	narData := nartest.Build(t, 14, nartest.File{Name: "f", Contents: make([]byte, 16<<20)})
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := idx.client.PutNar(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&indexv1.PutNarRequest{Msg: &indexv1.PutNarRequest_Header{Header: &indexv1.PutNarHeader{}}}); err != nil {
		t.Fatal(err)
	}
	// Send 8 MiB: flow control makes the server take most of it in, so
	// the upload is under way when the client cancels.
	for off := 0; off < 8<<20; off += grpcutil.ChunkSize {
		if err := stream.Send(&indexv1.PutNarRequest{Msg: &indexv1.PutNarRequest_Chunk{Chunk: narData[off : off+grpcutil.ChunkSize]}}); err != nil {
			t.Fatal(err)
		}
	}
	cancel()
	if err := <-idx.handlerDone; err == nil {
		t.Fatal("PutNar handler succeeded after the client cancelled")
	}
	if tmp, _ := os.ReadDir(filepath.Join(idx.dir, "tmp")); len(tmp) != 0 {
		t.Errorf("tmp/ holds %d files after a cancelled upload", len(tmp))
	}
	if nars, _ := os.ReadDir(filepath.Join(idx.dir, "nars")); len(nars) != 0 {
		t.Errorf("nars/ holds %d entries after a cancelled upload", len(nars))
	}
	_, err = idx.client.StatNar(context.Background(), &indexv1.StatNarRequest{FileHash: nartest.Hash(narData).String()})
	wantCode(t, err, codes.NotFound)
}

func TestStatNarRefused(t *testing.T) {
	idx := startIndex(t, t.TempDir(), signerConn{})
	tests := []struct {
		hash string
		code codes.Code
	}{
		{"", codes.InvalidArgument},
		{"sha256:xyz", codes.InvalidArgument},
		{"md5:" + strings.Repeat("0", 32), codes.InvalidArgument},
		{"../../etc/passwd", codes.InvalidArgument},
		{nartest.Hash([]byte("absent")).String(), codes.NotFound},
		{nartest.Hash([]byte("absent")).NixBase32(), codes.NotFound},
	}
	for _, tt := range tests {
		_, err := idx.client.StatNar(context.Background(), &indexv1.StatNarRequest{FileHash: tt.hash})
		if status := err; status == nil {
			t.Errorf("StatNar(%q) succeeded", tt.hash)
			continue
		}
		wantCode(t, err, tt.code)
	}
}

func TestGetNar(t *testing.T) {
	fake := fakeSigner(t)
	idx := startIndex(t, t.TempDir(), signerConn{fake: fake})
	narData := nartest.Build(t, 15, nartest.File{Name: "f", Contents: bytes.Repeat([]byte("0123456789abcdef"), 100000)})
	xzFile := nartest.Compress(t, compression.XZ, narData)
	nf := mustPutNar(t, idx.client, xzFile)
	plain := mustPutNar(t, idx.client, narData)
	sp := newStorePath("range-test")
	mustPublish(t, idx.client, pathInfo(sp, nf))
	plainPath := newStorePath("plain")
	mustPublish(t, idx.client, pathInfo(plainPath, plain))

	fileTotal, narTotal := uint64(len(xzFile)), uint64(len(narData))
	byFile := func(h string) *indexv1.GetNarRequest {
		return &indexv1.GetNarRequest{Selector: &indexv1.GetNarRequest_FileHash{FileHash: h}}
	}
	byPath := func(h string) *indexv1.GetNarRequest {
		return &indexv1.GetNarRequest{Selector: &indexv1.GetNarRequest_StoreHash{StoreHash: h}}
	}
	with := func(r *indexv1.GetNarRequest, off, n uint64, expect string) *indexv1.GetNarRequest {
		r.Offset, r.Length, r.ExpectedNarHash = off, n, expect
		return r
	}
	tests := []struct {
		name     string
		req      *indexv1.GetNarRequest
		wantComp string
		total    uint64
		want     []byte
	}{
		{"file whole", byFile(nf.GetFileHash()), compression.XZ, fileTotal, xzFile},
		{"file by bare nix32", byFile(strings.TrimPrefix(nf.GetFileHash(), "sha256:")), compression.XZ, fileTotal, xzFile},
		{"file range", with(byFile(nf.GetFileHash()), 100, 200, ""), compression.XZ, fileTotal, xzFile[100:300]},
		{"file tail", with(byFile(nf.GetFileHash()), fileTotal-5, 0, ""), compression.XZ, fileTotal, xzFile[fileTotal-5:]},
		{"path decompressed", byPath(hashPart(sp)), compression.None, narTotal, narData},
		{"path with its NAR hash", with(byPath(hashPart(sp)), 0, 0, nf.GetNarHash()), compression.None, narTotal, narData},
		{"path range from the start", with(byPath(hashPart(sp)), 0, 300000, ""), compression.None, narTotal, narData[:300000]},
		{"uncompressed path range", with(byPath(hashPart(plainPath)), 7, 1<<20, ""), compression.None, narTotal, narData[7 : 7+1<<20]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hdr, data, err := getNar(context.Background(), idx.client, tt.req)
			if err != nil {
				t.Fatalf("GetNar: %v", err)
			}
			if hdr.GetTotalSize() != tt.total || hdr.GetCompression() != tt.wantComp {
				t.Errorf("header %v, want total_size %d compression %s", hdr, tt.total, tt.wantComp)
			}
			if !bytes.Equal(data, tt.want) {
				t.Errorf("got %d bytes, not the %d wanted", len(data), len(tt.want))
			}
		})
	}

	refused := []struct {
		name  string
		req   *indexv1.GetNarRequest
		code  codes.Code
		parts []string
	}{
		{"no selector", &indexv1.GetNarRequest{}, codes.InvalidArgument, []string{"selector"}},
		{"bad file hash", byFile("sha256:zzz"), codes.InvalidArgument, nil},
		{"bad store hash", byPath("not-a-hash"), codes.InvalidArgument, []string{"store_hash"}},
		{"absent file", byFile(nartest.Hash([]byte("x")).String()), codes.NotFound, nil},
		{"absent path", byPath(hashPart(newStorePath("absent"))), codes.NotFound, nil},
		{"other NAR hash", with(byPath(hashPart(sp)), 0, 0, nartest.Hash([]byte("x")).String()), codes.NotFound, nil},
		{"bad NAR hash", with(byPath(hashPart(sp)), 0, 0, "sha256:"), codes.InvalidArgument, nil},
		{"offset at the end", with(byPath(hashPart(sp)), narTotal, 0, ""), codes.OutOfRange, nil},
		// Reaching an offset of a compressed file's NAR costs decompressing
		// everything before it: refused, however few bytes are asked.
		{"compressed path range", with(byPath(hashPart(sp)), 500000, 300000, ""), codes.OutOfRange, []string{"compressed", "nar/"}},
		{"compressed path range near the end", with(byPath(hashPart(sp)), narTotal-10, 1000, ""), codes.OutOfRange, []string{"compressed"}},
		{"offset past the end", with(byFile(nf.GetFileHash()), fileTotal+1, 0, ""), codes.OutOfRange, nil},
	}
	for _, tt := range refused {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := getNar(context.Background(), idx.client, tt.req)
			wantCode(t, err, tt.code, tt.parts...)
		})
	}
}

// TestGetNarClientGoesAway: a reader that cancels mid-stream ends the
// call: the 32 MiB NAR cannot fit in the flow-control window, so the
// handler cannot finish without the client.
func TestGetNarClientGoesAway(t *testing.T) {
	fake := fakeSigner(t)
	idx := startIndex(t, t.TempDir(), signerConn{fake: fake})
	narData := nartest.Build(t, 16, nartest.File{Name: "f", Contents: make([]byte, 32<<20)})
	nf := mustPutNar(t, idx.client, nartest.Compress(t, compression.Zstd, narData))
	<-idx.handlerDone // the PutNar call
	sp := newStorePath("zeros")
	mustPublish(t, idx.client, pathInfo(sp, nf))

	ctx, cancel := context.WithCancel(context.Background())
	stream, err := idx.client.GetNar(ctx, &indexv1.GetNarRequest{Selector: &indexv1.GetNarRequest_StoreHash{StoreHash: hashPart(sp)}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-idx.handlerDone; err == nil {
		t.Fatal("GetNar handler finished successfully though the client went away")
	}
}
