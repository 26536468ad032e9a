package narstore_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/nixcache/nixcache/nix/compression"
	"github.com/nixcache/nixcache/nix/nixhash"
	"github.com/nixcache/nixcache/services/index/internal/narstore"
	"github.com/nixcache/nixcache/services/index/internal/nartest"
)

// TestBucket runs the store over a real bucket: uploads in one piece and
// in parts, Stat, Walk, ranges, presigned URLs, removal, on a bucket that exists only with CreateBucket.
func TestBucket(t *testing.T) {
	endpoint := nartest.StartVersitygw(t, "narstoretest", "narstoretestsecret")
	ctx := context.Background()
	cfg := narstore.BucketConfig{Endpoint: endpoint, Bucket: "narstore-test", Prefix: "cache", Region: "us-east-1",
		PathStyle: true, PartSize: narstore.MinPartSize}
	if _, err := narstore.OpenBucket(ctx, cfg); err == nil {
		t.Fatal("OpenBucket of a missing bucket succeeded")
	}
	cfg.CreateBucket = true
	// Without PathStyle the library chooses: path style for a server that
	// is not AWS's, as this one.
	cfg.PathStyle = false
	bucket, err := narstore.OpenBucket(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	s, err := narstore.OpenWith(t.TempDir(), 64<<20, bucket)
	if err != nil {
		t.Fatal(err)
	}

	small := nartest.Small(t, 4)
	big := nartest.Build(t, 5, nartest.File{Name: "f", Contents: bytes.Repeat([]byte("0123456789abcdef"), 12<<16)}) // 12 MiB: 3 parts
	want := map[string]int64{}
	for _, file := range [][]byte{nartest.Compress(t, compression.Zstd, small), big} {
		nf, err := s.Ingest(ctx, bytes.NewReader(file), narstore.Expect{})
		if err != nil {
			t.Fatalf("Ingest %d bytes: %v", len(file), err)
		}
		h, _ := nixhash.Parse(nf.GetFileHash())
		want[h.NixBase32()] = int64(len(file))
		if size, err := s.Stat(ctx, nf); err != nil || size != int64(len(file)) {
			t.Errorf("Stat: %d, %v; want %d", size, err, len(file))
		}
		from, n := uint64(len(file)/3), uint64(len(file)/2)
		if got := readRange(t, s, nf, false, from, n); !bytes.Equal(got, file[from:from+n]) {
			t.Errorf("range %d+%d: %d bytes", from, n, len(got))
		}
		url, ok, err := s.Presign(ctx, nf, time.Minute)
		if !ok || err != nil {
			t.Fatalf("Presign: %v %v", ok, err)
		}
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !bytes.Equal(got, file) || resp.Header.Get("Content-Encoding") != "" {
			t.Errorf("presigned GET: %d, %d bytes, Content-Encoding %q", resp.StatusCode, len(got), resp.Header.Get("Content-Encoding"))
		}
	}
	// The decompressing read, through the bucket.
	zf, err := s.Ingest(ctx, bytes.NewReader(nartest.Compress(t, compression.Zstd, small)), narstore.Expect{})
	if err != nil {
		t.Fatal(err)
	}
	if got := readRange(t, s, zf, true, 10, 50); !bytes.Equal(got, small[10:60]) {
		t.Errorf("decompressed range: %d bytes", len(got))
	}

	found := map[string]int64{}
	err = s.Walk(ctx, func(f narstore.StoredFile) error {
		found[f.FileHash] = f.Size
		return nil
	})
	if err != nil || len(found) != len(want) {
		t.Fatalf("Walk: %v, %v; want %v", found, err, want)
	}
	for h, size := range want {
		if found[h] != size {
			t.Errorf("Walk: %s is %d bytes, want %d", h, found[h], size)
		}
	}

	if err := s.Remove(zf); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Stat(ctx, zf); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Stat after Remove: %v, want fs.ErrNotExist", err)
	}
	if _, err := s.Open(ctx, zf, false, 0, 0); err == nil {
		t.Error("Open after Remove succeeded")
	}
	if err := s.Remove(zf); err != nil {
		t.Errorf("Remove of a removed file: %v", err)
	}
}

// TestBucketUnreachable: a bucket that cannot be reached at start is an
// error naming -s3-endpoint.
func TestBucketUnreachable(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "x")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "y")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = narstore.OpenBucket(ctx, narstore.BucketConfig{Endpoint: "http://" + addr, Bucket: "b", Region: "us-east-1", PathStyle: true, MaxRetries: 1})
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte("-s3-endpoint")) {
		t.Errorf("OpenBucket of a closed port: %v", err)
	}
}
