package nardump_test

import (
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/nixcache/nixcache/nix/nar"
	"github.com/nixcache/nixcache/nix/nardump"
)

// benchTrees are a 64 MiB file, a tree of 2048 files of 8 KiB (a
// closure's headers and scripts), and a tree of one small file (the many
// tiny paths of a closure).
func benchTrees(b *testing.B) map[string]string {
	b.Helper()
	dir := b.TempDir()
	rng := rand.New(rand.NewPCG(3, 4))
	data := func(n int) []byte {
		d := make([]byte, n)
		for i := range d {
			d[i] = byte(rng.Uint32())
		}
		return d
	}
	write := func(p string, d []byte) {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(p, d, 0o644); err != nil {
			b.Fatal(err)
		}
	}
	write(filepath.Join(dir, "big", "file"), data(64<<20))
	small := data(8 << 10)
	for i := range 2048 {
		write(filepath.Join(dir, "many", fmt.Sprintf("d%02d", i%32), fmt.Sprintf("f%04d", i)), small)
	}
	write(filepath.Join(dir, "tiny", "f"), data(300))
	return map[string]string{"64MiB": filepath.Join(dir, "big"), "2048x8KiB": filepath.Join(dir, "many"), "300B": filepath.Join(dir, "tiny")}
}

// BenchmarkDump compares this package's Reader, read in gRPC-sized chunks
// into a fresh buffer each (as the index sends them), with nar.DumpPath.
func BenchmarkDump(b *testing.B) {
	trees := benchTrees(b)
	for _, name := range []string{"64MiB", "2048x8KiB", "300B"} {
		root := trees[name]
		n, err := io.Copy(io.Discard, mustOpen(b, root, 0))
		if err != nil {
			b.Fatal(err)
		}
		b.Run("Reader/"+name, func(b *testing.B) {
			b.SetBytes(n)
			b.ReportAllocs()
			for b.Loop() {
				r := mustOpen(b, root, 0)
				for {
					buf := make([]byte, 256<<10)
					if _, err := io.ReadFull(r, buf); err == io.EOF || err == io.ErrUnexpectedEOF {
						break
					} else if err != nil {
						b.Fatal(err)
					}
				}
				r.Close()
			}
		})
		b.Run("Reader-reused-buffer/"+name, func(b *testing.B) {
			b.SetBytes(n)
			b.ReportAllocs()
			buf := make([]byte, 256<<10)
			for b.Loop() {
				r := mustOpen(b, root, 0)
				for {
					if _, err := io.ReadFull(r, buf); err == io.EOF || err == io.ErrUnexpectedEOF {
						break
					} else if err != nil {
						b.Fatal(err)
					}
				}
				r.Close()
			}
		})
		b.Run("DumpPath/"+name, func(b *testing.B) {
			b.SetBytes(n)
			b.ReportAllocs()
			for b.Loop() {
				if err := nar.DumpPath(io.Discard, root); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func mustOpen(b *testing.B, root string, off uint64) *nardump.Reader {
	r, err := nardump.Open(root, off)
	if err != nil {
		b.Fatal(err)
	}
	return r
}
