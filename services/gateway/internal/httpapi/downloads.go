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
	pending map[string]*noted // by file hash or store hash
	// full is signalled when pending reaches maxPendingDownloadFiles.
	full chan struct{}
}

// noted is what was served of one file or host path since the last
// report; it becomes an indexv1.NarDownloads only when reported, so that
// a download allocates nothing here but its first entry.
type noted struct {
	fileHash, storeHash string
	count, bytes        uint64
	last                time.Time
}

func newDownloadLog() *downloadLog {
	return &downloadLog{pending: map[string]*noted{}, full: make(chan struct{}, 1)}
}

// entry returns the pending entry of a file or host path, made if need
// be; at the bound on pending files only with grow (a download being
// served), else nil. The caller holds the lock.
func (l *downloadLog) entry(fileHash, storeHash string, grow bool) *noted {
	key := fileHash + storeHash // one of them is empty; they differ in length
	if n := l.pending[key]; n != nil {
		return n
	}
	if !grow && len(l.pending) >= maxPendingDownloadFiles {
		return nil
	}
	n := &noted{fileHash: fileHash, storeHash: storeHash}
	l.pending[key] = n
	if len(l.pending) == maxPendingDownloadFiles {
		select {
		case l.full <- struct{}{}:
		default:
		}
	}
	return n
}

// note records that bytes of the file fileHash, or of the NAR of the
// host path storeHash, are being sent, from offset (0: a download; later:
// the rest of one already counted).
func (l *downloadLog) note(fileHash, storeHash string, offset, bytes uint64, at time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := l.entry(fileHash, storeHash, true)
	if offset == 0 {
		n.count++
	}
	n.bytes += bytes
	if at.After(n.last) {
		n.last = at
	}
}

// requeue puts back a batch the index did not take, to go with the next
// report, as far as the bound on pending files allows; it returns how
// many files' counts it had to drop.
func (l *downloadLog) requeue(batch []*indexv1.NarDownloads) (dropped int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, b := range batch {
		n := l.entry(b.GetFileHash(), b.GetStoreHash(), false)
		if n == nil {
			dropped++
			continue
		}
		n.count += b.GetCount()
		n.bytes += b.GetBytes()
		if last := b.GetLast().AsTime(); last.After(n.last) {
			n.last = last
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
	for _, n := range l.pending {
		out = append(out, &indexv1.NarDownloads{FileHash: n.fileHash, StoreHash: n.storeHash,
			Count: n.count, Bytes: n.bytes, Last: timestamppb.New(n.last)})
	}
	l.pending = map[string]*noted{}
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
