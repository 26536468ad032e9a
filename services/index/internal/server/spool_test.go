package server_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/nartest"
)

// fakeSpool hands PutNar the files a test wrote, once each.
type fakeSpool struct {
	mu    sync.Mutex
	files map[string]*os.File
}

func (f *fakeSpool) Claim(_ context.Context, id string) (*os.File, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r, ok := f.files[id]
	delete(f.files, id)
	return r, ok
}

// spooled writes data into a file of dir, closes the writer and keeps the
// reader under id.
func (f *fakeSpool) spooled(t *testing.T, dir, id string, data []byte) {
	t.Helper()
	name := filepath.Join(dir, "spooled-"+id)
	if err := os.WriteFile(name, data, 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := os.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	f.files[id] = r
	f.mu.Unlock()
}

// TestPutNarSpooled: PutNar takes a spooled file by its id, and says what
// was wrong otherwise, retryable (503) when the file may come back.
func TestPutNarSpooled(t *testing.T) {
	narData := nartest.Small(t, 21)
	other := nartest.Small(t, 22)
	sp := &fakeSpool{files: map[string]*os.File{}}
	dir := t.TempDir()
	idx := startIndexWith(t, dir, signerConn{}, localSetup{storeDir: storeDir, spool: sp})
	ctx := context.Background()

	sp.spooled(t, dir, "good", narData)
	nf, err := putNar(ctx, idx.client, &indexv1.PutNarHeader{SpoolId: "good"}, nil)
	if err != nil {
		t.Fatalf("PutNar of a spooled file: %v", err)
	}
	if nf.GetNarHash() != nartest.Hash(narData).String() {
		t.Errorf("stored %v, want the NAR hash %s", nf, nartest.Hash(narData))
	}

	_, err = putNar(ctx, idx.client, &indexv1.PutNarHeader{SpoolId: "good"}, nil)
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "no such spooled upload") {
		t.Errorf("the same spool_id again: %v, want Unavailable saying there is no such spooled upload", err)
	}

	sp.spooled(t, dir, "chunks", other)
	_, err = putNar(ctx, idx.client, &indexv1.PutNarHeader{SpoolId: "chunks"}, other)
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "takes no chunks") {
		t.Errorf("a spooled upload with chunks: %v, want InvalidArgument saying it takes no chunks", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "spooled-chunks")); !os.IsNotExist(err) {
		t.Errorf("the refused spooled file: stat %v, want it removed", err)
	}

	plain := startIndex(t, t.TempDir(), signerConn{})
	_, err = putNar(ctx, plain.client, &indexv1.PutNarHeader{SpoolId: "good"}, nil)
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "-upload-spool") {
		t.Errorf("spool_id to an index without a spool: %v, want InvalidArgument naming -upload-spool", err)
	}
}
