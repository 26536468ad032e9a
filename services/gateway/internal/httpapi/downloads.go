package httpapi

import (
	"context"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
)

// DownloadReportInterval is how often a co-located gateway tells the
// index what it served from -nar-dir (RecordDownloads).
const DownloadReportInterval = time.Second

// maxPendingDownloadFiles bounds the files noted between two reports; a
// burst beyond it is reported at once.
const maxPendingDownloadFiles = 4096

// downloadLog collects the downloads a co-located gateway serves itself,
// so that the index counts them (downloads, bytes, the paths' last
// access, which garbage collection by age reads) without a round trip per
// download: ReportDownloads sends them in one call per interval.
type downloadLog struct {
	mu      sync.Mutex
	pending map[string]*indexv1.NarDownloads // by file hash or store hash
	// full is signalled when pending reaches maxPendingDownloadFiles.
	full chan struct{}
}

func newDownloadLog() *downloadLog {
	return &downloadLog{pending: map[string]*indexv1.NarDownloads{}, full: make(chan struct{}, 1)}
}

// note records that bytes of the file fileHash, or of the NAR of the
// host path storeHash, are being sent, from offset (0: a download; later:
// the rest of one already counted).
func (l *downloadLog) note(fileHash, storeHash string, offset, bytes uint64, at time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	key := fileHash + storeHash // one of them is empty; they differ in length
	d := l.pending[key]
	if d == nil {
		d = &indexv1.NarDownloads{FileHash: fileHash, StoreHash: storeHash}
		l.pending[key] = d
		if len(l.pending) == maxPendingDownloadFiles {
			select {
			case l.full <- struct{}{}:
			default:
			}
		}
	}
	if offset == 0 {
		d.Count++
	}
	d.Bytes += bytes
	d.Last = timestamppb.New(at)
}

// requeue puts back a batch the index did not take, to go with the next
// report, as far as the bound on pending files allows; it returns how
// many files' counts it had to drop.
func (l *downloadLog) requeue(batch []*indexv1.NarDownloads) (dropped int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, b := range batch {
		key := b.GetFileHash() + b.GetStoreHash()
		d := l.pending[key]
		switch {
		case d != nil:
			d.Count += b.GetCount()
			d.Bytes += b.GetBytes()
			if b.GetLast().AsTime().After(d.GetLast().AsTime()) {
				d.Last = b.GetLast()
			}
		case len(l.pending) < maxPendingDownloadFiles:
			l.pending[key] = b
		default:
			dropped++
		}
	}
	return dropped
}

// take returns what was noted since the last take.
func (l *downloadLog) take() []*indexv1.NarDownloads {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.pending) == 0 {
		return nil
	}
	out := make([]*indexv1.NarDownloads, 0, len(l.pending))
	for _, d := range l.pending {
		out = append(out, d)
	}
	l.pending = map[string]*indexv1.NarDownloads{}
	return out
}

// ReportDownloads sends the downloads this gateway served itself (from
// -nar-dir, or dumped from -local-store-dir) to the index every
// DownloadReportInterval, and once more when ctx ends (so call it with a
// context that ends after the HTTP server has stopped). A report the
// index does not take goes again with the next one, within the bound on
// pending files: the counts are statistics, and a download never waits on
// them. It returns at once without -nar-dir or -local-store-dir.
func (h *Handler) ReportDownloads(ctx context.Context) {
	if h.downloads == nil {
		return
	}
	tick := time.NewTicker(DownloadReportInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			h.sendDownloads(context.WithoutCancel(ctx))
			return
		case <-tick.C:
		case <-h.downloads.full:
		}
		h.sendDownloads(ctx)
	}
}

func (h *Handler) sendDownloads(ctx context.Context) {
	batch := h.downloads.take()
	if len(batch) == 0 {
		return
	}
	ctx, cancel := h.unary(ctx)
	defer cancel()
	if _, err := h.Index.RecordDownloads(ctx, &indexv1.RecordDownloadsRequest{Downloads: batch}); err != nil {
		dropped := h.downloads.requeue(batch)
		h.Log.WarnContext(ctx, "report the downloads this gateway served itself to the index; trying again with the next report",
			"files", len(batch), "dropped", dropped, "err", err)
	}
}
