package admin

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nixcache/nixcache/nix/nixhash"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/catalog"
)

// Tracker counts the index's traffic since start and records when each
// path's NAR was last downloaded: in memory, written to the catalogue in
// one transaction per flush (Run), never one per request.
type Tracker struct {
	cat *catalog.Catalog
	log *slog.Logger
	// Now is the clock of download times (tests set it).
	Now func() time.Time

	narinfoHits, narinfoMisses atomic.Uint64
	narDownloads, narBytesSent atomic.Uint64

	mu sync.Mutex
	// byPath and byFile are the downloads not yet flushed, by hash part
	// and by nix32 file hash (GetNar by file hash names no path).
	byPath, byFile map[string]catalog.Access
}

// NewTracker returns a Tracker recording into cat.
func NewTracker(cat *catalog.Catalog, log *slog.Logger) *Tracker {
	return &Tracker{cat: cat, log: log, Now: time.Now,
		byPath: map[string]catalog.Access{}, byFile: map[string]catalog.Access{}}
}

// Interceptors observe IndexService's GetPathInfo (hits and misses), GetNar
// (downloads, bytes, last access) and StatNar with a presigned URL (a
// download the client makes from the bucket: counted, no bytes).
func (t *Tracker) Interceptors() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(t.unary),
		grpc.ChainStreamInterceptor(t.stream),
	}
}

const (
	getPathInfoMethod = "/" + "nixcache.index.v1.IndexService" + "/GetPathInfo"
	getNarMethod      = "/" + "nixcache.index.v1.IndexService" + "/GetNar"
	statNarMethod     = "/" + "nixcache.index.v1.IndexService" + "/StatNar"
)

func (t *Tracker) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	resp, err := handler(ctx, req)
	switch info.FullMethod {
	case getPathInfoMethod:
		switch status.Code(err) {
		case codes.OK:
			t.narinfoHits.Add(1)
		case codes.NotFound:
			t.narinfoMisses.Add(1)
		}
	case statNarMethod:
		r, ok := req.(*indexv1.StatNarRequest)
		st, _ := resp.(*indexv1.StatNarResponse)
		switch {
		case !ok || err != nil || st == nil:
		case r.GetDownload():
			// A co-located gateway serves the file itself and says so:
			// the download counts as one through GetNar would, its bytes
			// when it starts.
			if size := st.GetFile().GetFileSize(); r.GetOffset() < size {
				t.narBytesSent.Add(size - r.GetOffset())
			}
			t.download(&indexv1.GetNarRequest{
				Selector: &indexv1.GetNarRequest_FileHash{FileHash: r.GetFileHash()},
				Offset:   r.GetOffset(),
			})
		case st.GetUrl() != "":
			// The client downloads from the bucket.
			t.download(&indexv1.GetNarRequest{Selector: &indexv1.GetNarRequest_FileHash{FileHash: st.GetFile().GetFileHash()}})
		}
	}
	return resp, err
}

func (t *Tracker) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if info.FullMethod != getNarMethod {
		return handler(srv, ss)
	}
	w := &narStream{ServerStream: ss}
	err := handler(srv, w)
	t.narBytesSent.Add(w.sent)
	if err == nil && w.req != nil {
		t.download(w.req)
	}
	return err
}

// narStream remembers a GetNar request and counts the bytes sent.
type narStream struct {
	grpc.ServerStream
	req  *indexv1.GetNarRequest
	sent uint64
}

func (s *narStream) RecvMsg(m any) error {
	err := s.ServerStream.RecvMsg(m)
	if r, ok := m.(*indexv1.GetNarRequest); ok && err == nil {
		s.req = r
	}
	return err
}

func (s *narStream) SendMsg(m any) error {
	err := s.ServerStream.SendMsg(m)
	if r, ok := m.(*indexv1.GetNarResponse); ok && err == nil {
		s.sent += uint64(len(r.GetChunk()))
	}
	return err
}

// RecordDownloads counts the downloads a co-located gateway served itself
// (from the index's nars/ directory, or dumped from the host's store) and
// reported in a batch
// (IndexService.RecordDownloads), as if they had gone through GetNar. A
// time in the future counts as now.
func (t *Tracker) RecordDownloads(ds []*indexv1.NarDownloads) {
	now := t.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, d := range ds {
		last := now
		if d.GetLast() != nil && d.GetLast().AsTime().Before(now) {
			last = d.GetLast().AsTime()
		}
		a := catalog.Access{Last: last.Unix(), Downloads: d.GetCount()}
		if d.GetStoreHash() != "" {
			merge(t.byPath, d.GetStoreHash(), a)
		} else if h, err := nixhash.ParseAs(nixhash.SHA256, d.GetFileHash()); err == nil {
			merge(t.byFile, h.NixBase32(), a)
		} else {
			continue
		}
		t.narDownloads.Add(d.GetCount())
		t.narBytesSent.Add(d.GetBytes())
	}
}

// download notes a NAR served. A range starting past 0 is the rest of a
// download already counted: it only refreshes the last access.
func (t *Tracker) download(req *indexv1.GetNarRequest) {
	n := uint64(0)
	if req.GetOffset() == 0 {
		n = 1
		t.narDownloads.Add(1)
	}
	a := catalog.Access{Last: t.Now().Unix(), Downloads: n}
	t.mu.Lock()
	defer t.mu.Unlock()
	switch sel := req.GetSelector().(type) {
	case *indexv1.GetNarRequest_StoreHash:
		merge(t.byPath, sel.StoreHash, a)
	case *indexv1.GetNarRequest_FileHash:
		if h, err := nixhash.ParseAs(nixhash.SHA256, sel.FileHash); err == nil {
			merge(t.byFile, h.NixBase32(), a)
		}
	}
}

func merge(m map[string]catalog.Access, key string, a catalog.Access) {
	old := m[key]
	old.Last = max(old.Last, a.Last)
	old.Downloads += a.Downloads
	m[key] = old
}

// Flush writes the downloads noted since the last flush.
func (t *Tracker) Flush() error {
	t.mu.Lock()
	byPath, byFile := t.byPath, t.byFile
	t.byPath, t.byFile = map[string]catalog.Access{}, map[string]catalog.Access{}
	t.mu.Unlock()
	// A file's record names the paths it serves: no scan.
	for fh, a := range byFile {
		users, err := t.cat.FileUsers(fh)
		if err != nil {
			return err
		}
		for _, h := range users {
			merge(byPath, h, a)
		}
	}
	return t.cat.AddAccess(byPath)
}

// Run flushes every interval until ctx is done, then once more.
func (t *Tracker) Run(ctx context.Context, interval time.Duration) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			if err := t.Flush(); err != nil {
				t.log.Warn("record downloads", "err", err)
			}
			return
		case <-tick.C:
			if err := t.Flush(); err != nil {
				t.log.Warn("record downloads", "err", err)
			}
		}
	}
}

// flushQuietly flushes before a read that shows download times.
func (t *Tracker) flushQuietly() {
	if err := t.Flush(); err != nil {
		t.log.Warn("record downloads", "err", err)
	}
}
