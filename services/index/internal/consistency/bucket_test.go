package consistency_test

import (
	"bytes"
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nixcache/nixcache/nix/compression"
	"github.com/nixcache/nixcache/services/index/internal/catalog"
	"github.com/nixcache/nixcache/services/index/internal/consistency"
	"github.com/nixcache/nixcache/services/index/internal/narstore"
	"github.com/nixcache/nixcache/services/index/internal/nartest"
)

// TestCheckBucket: with the NAR files in an S3 bucket (a real one,
// Versity Gateway), a path whose object is gone is quarantined, and an
// object no record names is counted and logged but left in place.
func TestCheckBucket(t *testing.T) {
	endpoint := nartest.StartVersitygw(t, "checktest", "checktestsecret")
	ctx := context.Background()
	bucket, err := narstore.OpenBucket(ctx, narstore.BucketConfig{Endpoint: endpoint, Bucket: "check-test", Region: "us-east-1",
		PathStyle: true, PartSize: narstore.MinPartSize, CreateBucket: true})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cat, err := catalog.Open(filepath.Join(dir, "catalog.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer cat.Close()
	nars, err := narstore.OpenWith(dir, 1<<20, bucket)
	if err != nil {
		t.Fatal(err)
	}
	x := &index{t: t, dir: dir, cat: cat, nars: nars}
	x.publish(hashPart(0), x.upload(0, compression.XZ, true))
	gone := x.upload(1, compression.Zstd, true)
	x.publish(hashPart(1), gone)
	orphan := x.upload(2, compression.None, false)
	if err := nars.Remove(gone); err != nil {
		t.Fatal(err)
	}

	var log bytes.Buffer
	r, err := consistency.Check(ctx, cat, nars, slog.New(slog.NewTextHandler(&log, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := countsOf(r), (counts{paths: 2, narFiles: 2, files: 2, quarantined: 1, orphans: 1}); got != want {
		t.Errorf("report %+v, want %+v\n%s", got, want, log.String())
	}
	if x.served(hashPart(1)) || !x.served(hashPart(0)) {
		t.Errorf("served: %v %v, want the good path only", x.served(hashPart(0)), x.served(hashPart(1)))
	}
	if !strings.Contains(log.String(), "left in place") {
		t.Errorf("log does not say the orphan is left in place:\n%s", log.String())
	}
	if size, err := nars.Stat(ctx, orphan); err != nil || uint64(size) != orphan.GetFileSize() {
		t.Errorf("the orphan object: %d, %v; want it kept", size, err)
	}
}
