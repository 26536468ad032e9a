package server_test

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/nixcache/nixcache/nix/daemon"

	"github.com/nixcache/nixcache/nix/compression"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/nartest"
)

// benchNAR is a NAR of about 64 MiB: files of pseudo-random bytes.
func benchNAR(b *testing.B) []byte {
	r := rand.New(rand.NewPCG(1, 2))
	var files []nartest.File
	for i := range 16 {
		data := make([]byte, 4<<20-1000)
		for j := 0; j+8 <= len(data); j += 8 {
			v := r.Uint64()
			for k := range 8 {
				data[j+k] = byte(v >> (8 * k))
			}
		}
		files = append(files, nartest.File{Name: string(rune('a'+i)) + ".bin", Contents: data})
	}
	return nartest.Build(b, 0, files...)
}

func BenchmarkPutNar(b *testing.B) {
	narData := benchNAR(b)
	for _, comp := range []string{compression.None, compression.Zstd} {
		b.Run(comp, func(b *testing.B) {
			file := nartest.Compress(b, comp, narData)
			idx := startIndex(b, b.TempDir(), signerConn{})
			b.SetBytes(int64(len(file)))
			b.ResetTimer()
			for b.Loop() {
				if _, err := putNar(context.Background(), idx.client, &indexv1.PutNarHeader{}, file); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkGetNar(b *testing.B) {
	narData := benchNAR(b)
	fake := fakeSigner(b)
	idx := startIndex(b, b.TempDir(), signerConn{fake: fake})
	plain := mustPutNar(b, idx.client, narData)
	zst := mustPutNar(b, idx.client, nartest.Compress(b, compression.Zstd, narData))
	sp := newStorePath("bench")
	mustPublish(b, idx.client, pathInfo(sp, zst))
	tests := []struct {
		name string
		req  *indexv1.GetNarRequest
	}{
		{"file", &indexv1.GetNarRequest{Selector: &indexv1.GetNarRequest_FileHash{FileHash: plain.GetFileHash()}}},
		{"path-decompressing-zstd", &indexv1.GetNarRequest{Selector: &indexv1.GetNarRequest_StoreHash{StoreHash: hashPart(sp)}}},
	}
	for _, tt := range tests {
		b.Run(tt.name, func(b *testing.B) {
			b.SetBytes(int64(len(narData)))
			for b.Loop() {
				_, data, err := getNar(context.Background(), idx.client, tt.req)
				if err != nil || len(data) != len(narData) {
					b.Fatalf("GetNar: %d bytes, %v", len(data), err)
				}
			}
		})
	}
}

// BenchmarkGetNarLocal streams the NAR of a path of a (fake daemon's)
// local store, dumped from the file system: one 64 MiB file, and 2048
// files of 8 KiB.
func BenchmarkGetNarLocal(b *testing.B) {
	l := startLocalIndexB(b)
	rng := rand.New(rand.NewPCG(5, 6))
	data := func(n int) []byte {
		d := make([]byte, n)
		for i := range d {
			d[i] = byte(rng.Uint32())
		}
		return d
	}
	big := l.daemon.Build(b, "big", nil, func(p string) {
		os.MkdirAll(p, 0o755)
		os.WriteFile(p+"/file", data(64<<20), 0o644)
	})
	small := data(8 << 10)
	many := l.daemon.Build(b, "many", nil, func(p string) {
		for i := range 2048 {
			d := fmt.Sprintf("%s/d%02d", p, i%32)
			os.MkdirAll(d, 0o755)
			os.WriteFile(fmt.Sprintf("%s/f%04d", d, i), small, 0o644)
		}
	})
	for _, p := range []*daemon.PathInfo{big, many} {
		b.Run(filepath.Base(p.StorePath)[33:], func(b *testing.B) {
			req := &indexv1.GetNarRequest{Selector: &indexv1.GetNarRequest_StoreHash{StoreHash: hashOf(p.StorePath)}}
			b.SetBytes(int64(p.NarSize))
			b.ReportAllocs()
			for b.Loop() {
				if err := drainNar(context.Background(), l.client, req, p.NarSize); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// drainNar reads a GetNar stream to the end, checking its size only.
func drainNar(ctx context.Context, c indexv1.IndexServiceClient, req *indexv1.GetNarRequest, want uint64) error {
	stream, err := c.GetNar(ctx, req)
	if err != nil {
		return err
	}
	var n uint64
	for {
		msg, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		n += uint64(len(msg.GetChunk()))
	}
	if n != want {
		return fmt.Errorf("%d bytes, want %d", n, want)
	}
	return nil
}
