//go:build unix

package daemon

import (
	"context"
	"io"
	"runtime"
	"testing"

	"github.com/nixcache/nixcache/nix/nar"
)

// BenchmarkDaemon measures the real nix-daemon through this client: the
// latency of the queries a binary cache makes per request, and NAR
// throughput, against reading the store from disk (nar.DumpPath), which a
// cache on the same host as the store may do instead.
func BenchmarkDaemon(b *testing.B) {
	d := startDaemon(b)
	s := d.buildSample(b)
	ctx := context.Background()
	c := d.dial(b)
	hashPart := s.top[len("/nix/store/") : len("/nix/store/")+32]

	b.Run("QueryPathInfo", func(b *testing.B) {
		for b.Loop() {
			if _, err := c.QueryPathInfo(ctx, s.top); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("QueryPathFromHashPart", func(b *testing.B) {
		for b.Loop() {
			if _, err := c.QueryPathFromHashPart(ctx, hashPart); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("IsValidPath", func(b *testing.B) {
		for b.Loop() {
			if _, err := c.IsValidPath(ctx, s.top); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("QueryPathInfo/pool", func(b *testing.B) {
		pool, err := NewPool(d.socket, runtime.GOMAXPROCS(0))
		if err != nil {
			b.Fatal(err)
		}
		defer pool.Close()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				err := pool.Do(ctx, func(c *Conn) error {
					_, err := c.QueryPathInfo(ctx, s.top)
					return err
				})
				if err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
	for _, p := range []struct{ name, path string }{{"small", s.top}, {"50MiB", s.big}} {
		info, err := c.QueryPathInfo(ctx, p.path)
		if err != nil {
			b.Fatal(err)
		}
		b.Run("NarFromPath/"+p.name, func(b *testing.B) {
			b.SetBytes(int64(info.NarSize))
			for b.Loop() {
				if err := c.NarFromPath(ctx, p.path, io.Discard); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("DumpPathFromDisk/"+p.name, func(b *testing.B) {
			b.SetBytes(int64(info.NarSize))
			for b.Loop() {
				if err := nar.DumpPath(io.Discard, d.physical(p.path)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
