package narstore_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/nixcache/nixcache/nix/compression"
	"github.com/nixcache/nixcache/services/index/internal/fault"
	"github.com/nixcache/nixcache/services/index/internal/narstore"
	"github.com/nixcache/nixcache/services/index/internal/nartest"
)

// narString is one string of the NAR format: its length, the bytes, zero
// padding to 8.
func narString(s string) []byte {
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(s)))
	b = append(b, s...)
	return append(b, make([]byte, (8-len(s)%8)%8)...)
}

// zstdBomb is a valid zstd NAR of one regular file of frames×64 MiB
// zeros, a few KiB in all: the zstd frame of 64 MiB zeros is repeated
// (a zstd stream may be many frames).
func zstdBomb(t *testing.T, frames int) []byte {
	t.Helper()
	const zeros = 64 << 20
	var head []byte
	for _, s := range []string{"nix-archive-1", "(", "type", "regular", "contents"} {
		head = append(head, narString(s)...)
	}
	head = binary.LittleEndian.AppendUint64(head, uint64(frames)*zeros)
	var out bytes.Buffer
	out.Write(nartest.Compress(t, compression.Zstd, head))
	frame := nartest.Compress(t, compression.Zstd, make([]byte, zeros))
	for range frames {
		out.Write(frame)
	}
	out.Write(nartest.Compress(t, compression.Zstd, narString(")")))
	return out.Bytes()
}

// stallingReader returns data, then blocks until ctx ends, as the gRPC
// stream of a client that sent a bomb and went quiet does.
type stallingReader struct {
	ctx  context.Context
	data *bytes.Reader
}

func (r *stallingReader) Read(p []byte) (int, error) {
	if r.data.Len() > 0 {
		return r.data.Read(p)
	}
	<-r.ctx.Done()
	return 0, r.ctx.Err()
}

// TestIngestBombStopsWithClient: when the uploader of a bomb goes away,
// its decompression stops within a second, though it needs no more of the
// upload to go on inflating.
func TestIngestBombStopsWithClient(t *testing.T) {
	bomb := zstdBomb(t, 64) // 4 GiB of NAR
	s := open(t, t.TempDir(), 8<<30)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := s.Ingest(ctx, &stallingReader{ctx: ctx, data: bytes.NewReader(bomb)}, narstore.Expect{})
		done <- err
	}()
	// Let the decompression get going, then leave.
	select {
	case err := <-done:
		t.Fatalf("Ingest of a 4 GiB bomb ended before the client left: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	cancel()
	left := time.Now()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Ingest error %v, want context.Canceled", err)
		}
		t.Logf("Ingest ended %v after the client left", time.Since(left))
	case <-time.After(time.Second):
		t.Fatal("Ingest still decompressing 1s after the client left")
	}
}

// TestIngestDecompressionRatio: past the floor, an upload inflating more
// than MaxRatio times is refused as a bomb; a real NAR is not.
func TestIngestDecompressionRatio(t *testing.T) {
	s := open(t, t.TempDir(), 8<<30).WithLimits(narstore.Limits{MaxRatio: 100, RatioFloor: 1 << 20})
	start := time.Now()
	_, err := s.Ingest(context.Background(), bytes.NewReader(zstdBomb(t, 16)), narstore.Expect{})
	if !errors.Is(err, fault.ErrInvalid) || !strings.Contains(err.Error(), "decompression bomb") {
		t.Fatalf("Ingest of a 1 GiB bomb: %v, want an invalid upload refused as a decompression bomb", err)
	}
	t.Logf("bomb refused after %v", time.Since(start))
	// Past the floor, compressing a few times, as real NARs do.
	contents := make([]byte, 3<<20)
	rng := rand.New(rand.NewPCG(7, 7))
	for i := range contents {
		contents[i] = "abcdefghijklmnopqrstuvwxyz \n"[rng.IntN(28)]
	}
	narData := nartest.Build(t, 7, nartest.File{Name: "text", Contents: contents})
	for _, comp := range []string{compression.XZ, compression.Zstd} {
		if _, err := s.Ingest(context.Background(), bytes.NewReader(nartest.Compress(t, comp, narData)), narstore.Expect{}); err != nil {
			t.Errorf("Ingest of a real %s NAR: %v", comp, err)
		}
	}
}

var _ io.Reader = (*stallingReader)(nil)
