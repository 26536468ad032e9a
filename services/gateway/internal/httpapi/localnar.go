package httpapi

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/nixcache/nixcache/nix/nardump"
	"github.com/nixcache/nixcache/nix/storepath"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
)

// dumpBufSize is the buffer a NAR dump writes its format bytes and small
// files through; larger files go with sendfile.
const dumpBufSize = 128 << 10

var dumpBufs = sync.Pool{New: func() any {
	b := make([]byte, dumpBufSize)
	return &b
}}

// localNar is the NAR of a host path (the nix-serve URL forms, which
// the narinfos of the index's -local-store paths name), dumped from
// LocalStoreDir by the gateway itself, as nix-serve and harmonia do: the
// contents of large files go from the page cache to the socket with
// sendfile, and no byte crosses the index or gRPC. The index stays the
// authority on what is served: GetPathInfo must find the path, as a host
// path (a pushed one of the same hash part is the index's to stream, from
// its file), with the NAR hash the URL names; the answer is kept while the
// index watch is in sync (narSourceCache). Nothing is hashed on the way,
// as when the index dumps it: the NAR hash is in the signed narinfo, and
// Nix checks it on arrival. It returns nil, and no error, when the
// request is better left to the index's stream.
func (h *Handler) localNar(r *http.Request, t narTarget) (*narDownload, error) {
	info, err := h.hostPathInfo(r, t.storeHash)
	if err != nil {
		return nil, err
	}
	if info == nil {
		return nil, nil // pushed: the index serves its file
	}
	if t.narHash != "" && !sameHash(info.GetNarHash(), t.narHash) {
		return nil, errNoSuchNar(r.URL.Path, "the store path's NAR has another hash")
	}
	sp, err := storepath.Parse(h.StoreDir, info.GetStorePath())
	if err != nil {
		h.Log.WarnContext(r.Context(), "index named a host path this gateway cannot place; streaming it instead", "store_path", info.GetStorePath(), "err", err)
		return nil, nil
	}
	// A path gone from the directory is left to the index, which knows
	// whether it still is one.
	root := filepath.Join(h.LocalStoreDir, sp.Base())
	if _, err := os.Lstat(root); err != nil {
		h.narSources.forget(storeKey(t.storeHash))
		if !errors.Is(err, fs.ErrNotExist) {
			h.Log.WarnContext(r.Context(), "host path not readable in -local-store-dir; streaming it instead", "err", err)
		}
		return nil, nil
	}
	rng, err := requestedRange(r, info.GetNarSize())
	if err != nil {
		return nil, err
	}
	start, length := rng.span(info.GetNarSize())
	nr, err := nardump.Open(root, start)
	if err != nil { // gone since the Lstat
		h.narSources.forget(storeKey(t.storeHash))
		return nil, errNoSuchNar(r.URL.Path, "the store path is no longer in the store")
	}
	h.downloads.note("", t.storeHash, start, length, time.Now())
	// A path that changed on disk under the dump fails while sending (or
	// at Nix's hash check), never silently.
	return &narDownload{body: &dumpBody{h: h, nr: nr}, length: length, rng: rng, sendfile: true,
		cut: "NAR dump cut", close: func() { nr.Close() }}, nil
}

// dumpBody is a host path's NAR, dumped from where localNar opened it.
type dumpBody struct {
	h  *Handler
	nr *nardump.Reader
}

func (b *dumpBody) send(w http.ResponseWriter, _ io.Writer, n uint64) error {
	rc := http.NewResponseController(w)
	before := func() {}
	if b.h.TransferIdleTimeout > 0 {
		before = func() { _ = rc.SetWriteDeadline(time.Now().Add(b.h.TransferIdleTimeout)) }
	}
	bufp := dumpBufs.Get().(*[]byte)
	defer dumpBufs.Put(bufp)
	if sent, err := b.nr.SendTo(w, n, *bufp, before); err != nil {
		return fmt.Errorf("dump after %d of %d bytes: %w", sent, n, err)
	}
	return nil
}

// hostPathInfo is the index's info for the host path with hash part
// hash, from the cache when it holds one; nil when the index has the path
// as a pushed one.
func (h *Handler) hostPathInfo(r *http.Request, hash string) (*indexv1.PathInfo, error) {
	key := storeKey(hash)
	if e, ok := h.narSources.get(key); ok {
		return e.info, nil
	}
	epoch := h.narSources.begin()
	ctx, cancel := h.unary(r.Context())
	defer cancel()
	resp, err := h.Index.GetPathInfo(ctx, &indexv1.GetPathInfoRequest{HashPart: hash})
	if err != nil {
		return nil, err
	}
	// A host path may have a file too: the index's compressed copy of
	// its NAR, which its narinfo names now; the nix-serve URL an older
	// narinfo named is still dumped here.
	if resp.GetInfo().GetFile() != nil && !resp.GetInfo().GetHostStore() {
		return nil, nil
	}
	// Kept: what a dump needs, not the references and signatures.
	info := resp.GetInfo()
	h.narSources.finish(epoch, key, narSource{info: &indexv1.PathInfo{
		StorePath: info.GetStorePath(), NarHash: info.GetNarHash(), NarSize: info.GetNarSize(),
	}})
	return info, nil
}
