package nar_test

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/nixcache/nixcache/nix/nar"
)

// The benchmark tree: half of it one large file, half many small ones, as
// in a real closure (a few big libraries, many small headers and scripts).
const (
	benchBigSize   = 32 << 20
	benchSmallSize = 8 << 10
	benchSmallN    = 4096
)

func benchContents(seed uint64, n int) []byte {
	rng := rand.New(rand.NewPCG(seed, 0))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// benchNAR builds a NAR of about 64 MiB.
func benchNAR(b *testing.B) []byte {
	b.Helper()
	var buf bytes.Buffer
	w := nar.NewWriter(&buf)
	must := func(err error) {
		if err != nil {
			b.Fatal(err)
		}
	}
	small := benchContents(1, benchSmallSize)
	must(w.WriteHeader(&nar.Header{Path: "/", Type: nar.TypeDirectory}))
	must(w.WriteHeader(&nar.Header{Path: "/big", Type: nar.TypeRegular, Size: benchBigSize}))
	_, err := w.Write(benchContents(2, benchBigSize))
	must(err)
	must(w.WriteHeader(&nar.Header{Path: "/small", Type: nar.TypeDirectory}))
	for i := range benchSmallN {
		must(w.WriteHeader(&nar.Header{Path: fmt.Sprintf("/small/f%05d", i), Type: nar.TypeRegular, Size: benchSmallSize}))
		_, err := w.Write(small)
		must(err)
		if i%16 == 0 {
			must(w.WriteHeader(&nar.Header{Path: fmt.Sprintf("/small/f%05d-link", i), Type: nar.TypeSymlink, LinkTarget: "../big"}))
		}
	}
	must(w.Close())
	return buf.Bytes()
}

// BenchmarkReader reads every node and all contents of a 64 MiB NAR, as a
// consumer that unpacks or hashes files would.
func BenchmarkReader(b *testing.B) {
	data := benchNAR(b)
	buf := make([]byte, 256<<10)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		r := nar.NewReader(bytes.NewReader(data))
		for {
			h, err := r.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
			if h.Type != nar.TypeRegular {
				continue
			}
			for {
				_, err := r.Read(buf)
				if err == io.EOF {
					break
				}
				if err != nil {
					b.Fatal(err)
				}
			}
		}
	}
}

// BenchmarkValidate checks a 64 MiB NAR without looking at the contents.
func BenchmarkValidate(b *testing.B) {
	data := benchNAR(b)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := nar.Validate(bytes.NewReader(data)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDumpPath dumps a 64 MiB tree (in the page cache) to io.Discard.
func BenchmarkDumpPath(b *testing.B) {
	root := b.TempDir()
	must := func(err error) {
		if err != nil {
			b.Fatal(err)
		}
	}
	must(os.WriteFile(filepath.Join(root, "big"), benchContents(2, benchBigSize), 0o644))
	must(os.Mkdir(filepath.Join(root, "small"), 0o755))
	small := benchContents(1, benchSmallSize)
	for i := range benchSmallN {
		must(os.WriteFile(filepath.Join(root, "small", fmt.Sprintf("f%05d", i)), small, 0o644))
		if i%16 == 0 {
			must(os.Symlink("../big", filepath.Join(root, "small", fmt.Sprintf("f%05d-link", i))))
		}
	}
	var count countWriter
	must(nar.DumpPath(&count, root))
	b.SetBytes(int64(count))
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		must(nar.DumpPath(io.Discard, root))
	}
}

type countWriter int64

func (c *countWriter) Write(p []byte) (int, error) {
	*c += countWriter(len(p))
	return len(p), nil
}
