package server_test

import (
	"context"
	"math/rand/v2"
	"testing"

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
