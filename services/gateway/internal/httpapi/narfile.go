package httpapi

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
)

// fileSegment is how much of a NAR file one sendfile run may send before
// the transfer's idle deadline is pushed back (TransferIdleTimeout): a
// client must take no longer than that per segment.
const fileSegment = 4 << 20

// fileNar is the stored file t names, served from the index's nars/
// directory (NarDir) the way nginx serves a static cache: the kernel
// copies the page cache to the socket (sendfile) and no byte crosses the
// index. The index stays the authority: StatNar must find the file
// (stored, verified, not quarantined) and name it, and its answer is
// reused only while the index watch says nothing was removed
// (narSourceCache); the gateway only opens that name, inside NarDir, and
// only a regular file of the size the index recorded. The download is
// reported to the index later, in a batch (ReportDownloads). It returns
// nil, and no error, when the request is better left to the index's
// stream: no name, or no such file here.
func (h *Handler) fileNar(r *http.Request, t narTarget) (*narDownload, error) {
	e, err := h.statNarFile(r, t.fileHash)
	if err != nil {
		return nil, err
	}
	nf := e.file
	if c := nf.GetCompression(); c != t.compression {
		return nil, errNoSuchNar(r.URL.Path, "the file is compressed with "+c)
	}
	f := h.openNarFile(r, e.rel, nf.GetFileSize())
	if f == nil {
		h.narSources.forget(t.fileHash)
		return nil, nil
	}
	rng, err := requestedRange(r, nf.GetFileSize())
	if err != nil {
		f.Close()
		return nil, err
	}
	start, length := rng.span(nf.GetFileSize())
	if start > 0 {
		if _, err := f.Seek(int64(start), io.SeekStart); err != nil {
			f.Close()
			return nil, fmt.Errorf("seek in NAR file %s: %w", t.fileHash, err)
		}
	}
	h.downloads.note(t.fileHash, "", start, length, time.Now())
	// As with a stream, a transfer cut short closes the connection short
	// of Content-Length, and Nix resumes with a Range request.
	return &narDownload{body: &fileBody{h: h, f: f}, length: length, rng: rng, sendfile: true,
		cut: "NAR file transfer cut", close: func() { f.Close() }}, nil
}

// fileBody is a NAR file, from where fileNar placed it.
type fileBody struct {
	h *Handler
	f *os.File
}

func (b *fileBody) send(w http.ResponseWriter, _ io.Writer, n uint64) error {
	return b.h.copyFile(w, b.f, int64(n))
}

// statNarFile is the index's StatNar answer for the file fileHash names,
// from the cache when it holds one.
func (h *Handler) statNarFile(r *http.Request, fileHash string) (narSource, error) {
	if e, ok := h.narSources.get(fileHash); ok {
		return e, nil
	}
	epoch := h.narSources.begin()
	ctx, cancel := h.unary(r.Context())
	defer cancel()
	resp, err := h.Index.StatNar(ctx, &indexv1.StatNarRequest{FileHash: fileHash})
	if err != nil {
		return narSource{}, err
	}
	e := narSource{file: resp.GetFile(), rel: resp.GetRelativePath()}
	if e.rel != "" {
		h.narSources.finish(epoch, fileHash, e)
	}
	return e, nil
}

// openNarFile opens rel, the name the index gave a file of size bytes,
// under NarDir; nil when the file cannot be served from there (then the
// index streams it). A name that is not a clean relative path is
// refused; the open itself cannot leave NarDir: one openat2 call that
// follows no symbolic link (openBeneath), or os.Root, which follows a
// link only while it stays inside, where openat2 cannot decide (a third
// of the syscalls of a download of a small file went to os.Root's walk).
func (h *Handler) openNarFile(r *http.Request, rel string, size uint64) *os.File {
	if rel == "" {
		return nil
	}
	if !cleanRelative(rel) {
		h.Log.WarnContext(r.Context(), "index named a NAR file outside -nar-dir; streaming it instead", "relative_path", rel)
		return nil
	}
	f, ok, err := openBeneath(h.narDirFile, rel)
	if !ok {
		f, err = h.narRoot.Open(filepath.FromSlash(rel))
	}
	if err != nil {
		h.Log.WarnContext(r.Context(), "NAR file not readable in -nar-dir (is it the index's nars/ directory?); streaming it instead", "err", err)
		return nil
	}
	st, err := f.Stat()
	switch {
	case err != nil:
		h.Log.WarnContext(r.Context(), "NAR file in -nar-dir: stat failed; streaming it instead", "err", err)
	case !st.Mode().IsRegular() || st.Size() < 0 || uint64(st.Size()) != size:
		h.Log.WarnContext(r.Context(), "NAR file in -nar-dir is not what the index recorded; streaming it instead",
			"relative_path", rel, "mode", st.Mode().String(), "size", st.Size(), "want_size", size)
	default:
		return f
	}
	f.Close()
	return nil
}

// cleanRelative reports whether rel is a slash-separated path that stays
// below the directory it is relative to: not absolute, no "..", ".", or
// empty segments, no backslashes.
func cleanRelative(rel string) bool {
	return rel != "" && path.Clean(rel) == rel && filepath.IsLocal(rel) &&
		!strings.HasPrefix(rel, "/") && !strings.Contains(rel, `\`) && !strings.HasPrefix(rel, "./")
}

// copyFile sends n bytes of f to w, in segments, each under a fresh idle
// deadline. Through the writers' ReadFrom methods each segment reaches
// net/http's connection, which sends it with sendfile.
func (h *Handler) copyFile(w http.ResponseWriter, f *os.File, n int64) error {
	rc := http.NewResponseController(w)
	var sent int64
	for sent < n {
		if h.TransferIdleTimeout > 0 {
			_ = rc.SetWriteDeadline(time.Now().Add(h.TransferIdleTimeout))
		}
		if sent == 0 {
			// The header goes out first, on its own: net/http would
			// otherwise read the file's first 512 bytes and write them
			// with it before it turns to sendfile.
			if err := rc.Flush(); err != nil {
				return fmt.Errorf("send NAR file: %w", err)
			}
		}
		m, err := io.CopyN(w, f, min(n-sent, fileSegment))
		sent += m
		if err != nil {
			return fmt.Errorf("send NAR file after %d of %d bytes: %w", sent, n, err)
		}
	}
	return nil
}
