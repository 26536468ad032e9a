package narstore_test

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/nixcache/nixcache/nix/compression"
	"github.com/nixcache/nixcache/services/index/internal/fault"
	"github.com/nixcache/nixcache/services/index/internal/narstore"
	"github.com/nixcache/nixcache/services/index/internal/nartest"
)

// FuzzIngest uploads arbitrary bytes as a NAR file: whatever they are
// (not UTF-8, not a NAR, a bad or a bomb of a compressed stream), the
// store refuses them with an error that blames the upload
// (fault.ErrInvalid, a 400), never another failure. The upload claims a
// file hash no input has, so that even a valid NAR is refused after its
// verification, without being committed (fast).
func FuzzIngest(f *testing.F) {
	small := nartest.Small(f, 1)
	f.Add(small)
	f.Add(nartest.Compress(f, compression.XZ, small))
	f.Add(nartest.Compress(f, compression.Zstd, small))
	f.Add(append(narString("nix-archive-1"), narString("\xff\xfe")...))
	f.Add(append(bytes.Clone(small[:len(small)-8]), 0xff, 0xfe, 0, 0, 0, 0, 0, 0))
	f.Add([]byte("BZh91AY&SY\xff\xfe"))
	f.Add([]byte{0xfd, '7', 'z', 'X', 'Z', 0, 0xff})
	f.Add([]byte{0x28, 0xb5, 0x2f, 0xfd, 0xff, 0xfe})
	dir := f.TempDir()
	s, err := narstore.Open(dir, 1<<20)
	if err != nil {
		f.Fatal(err)
	}
	s.WithLimits(narstore.Limits{MaxRatio: 100, RatioFloor: 1 << 16})
	f.Fuzz(func(t *testing.T, file []byte) {
		_, err := s.Ingest(context.Background(), bytes.NewReader(file), narstore.Expect{FileHash: nartest.Hash([]byte("no upload"))})
		if !errors.Is(err, fault.ErrInvalid) {
			t.Fatalf("Ingest of %q: %v, want an error of class fault.ErrInvalid", file, err)
		}
	})
}
