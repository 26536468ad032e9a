package consistency_test

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	"github.com/nixcache/nixcache/nix/nixhash"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/catalog"
	"github.com/nixcache/nixcache/services/index/internal/consistency"
	"github.com/nixcache/nixcache/services/index/internal/narstore"
)

// BenchmarkCheck times the startup check of a clean data directory of n
// published paths, each with its own small NAR file (a stat per file, the
// listing of nars/, the catalogue read once):
//
//	go test -run '^$' -bench Check -benchtime 3x ./internal/consistency/
func BenchmarkCheck(b *testing.B) {
	for _, n := range []int{10_000} {
		b.Run(fmt.Sprintf("paths=%d", n), func(b *testing.B) {
			dir := b.TempDir()
			fill(b, dir, n)
			cat, err := catalog.Open(filepath.Join(dir, "catalog.db"))
			if err != nil {
				b.Fatal(err)
			}
			defer cat.Close()
			nars, err := narstore.Open(dir, 1<<20)
			if err != nil {
				b.Fatal(err)
			}
			log := slog.New(slog.NewTextHandler(io.Discard, nil))
			b.ResetTimer()
			for range b.N {
				r, err := consistency.Check(context.Background(), cat, nars, log)
				if err != nil {
					b.Fatal(err)
				}
				if r.Paths != n || r.Files != n || r.Mismatches() != 0 {
					b.Fatalf("report %+v, want %d clean paths", r, n)
				}
			}
		})
	}
}

// fill writes n paths and their files straight into the catalogue's
// buckets (one transaction: publishing them one by one takes minutes).
func fill(b *testing.B, dir string, n int) {
	cat, err := catalog.Open(filepath.Join(dir, "catalog.db"))
	if err != nil {
		b.Fatal(err)
	}
	cat.Close()
	db, err := bolt.Open(filepath.Join(dir, "catalog.db"), 0o600, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	content := make([]byte, 512)
	err = db.Update(func(tx *bolt.Tx) error {
		paths, narsB := tx.Bucket([]byte("paths")), tx.Bucket([]byte("nars"))
		for i := range n {
			sum := sha256.Sum256(binary.BigEndian.AppendUint64(nil, uint64(i)))
			fh := nixhash.Hash{Algo: nixhash.SHA256, Digest: sum[:]}
			nf := &indexv1.NarFile{FileHash: fh.String(), FileSize: uint64(len(content)), Compression: "xz",
				NarHash: fh.String(), NarSize: 4096}
			hashPart := fmt.Sprintf("%032d", i)
			info := &indexv1.PathInfo{StorePath: "/nix/store/" + hashPart + "-bench", NarHash: fh.String(), NarSize: 4096,
				File: nf, Url: "nar/" + fh.NixBase32() + ".nar.xz", Signatures: []string{"bench-1:" + fh.NixBase32()}}
			for _, kv := range []struct {
				b   *bolt.Bucket
				key string
				m   proto.Message
			}{{paths, hashPart, info}, {narsB, fh.NixBase32(), nf}} {
				v, err := proto.Marshal(kv.m)
				if err != nil {
					return err
				}
				if err := kv.b.Put([]byte(kv.key), v); err != nil {
					return err
				}
			}
			name := filepath.Join(dir, "nars", fh.NixBase32()[:2], fh.NixBase32()+".nar.xz")
			if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
				return err
			}
			if err := os.WriteFile(name, content, 0o644); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
}
