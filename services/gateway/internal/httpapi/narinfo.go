package httpapi

import (
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/andybalholm/brotli"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nixcache/nixcache/nix/compression"
	"github.com/nixcache/nixcache/nix/narinfo"
	"github.com/nixcache/nixcache/nix/nixhash"
	"github.com/nixcache/nixcache/nix/storepath"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
)

const narinfoSuffix = ".narinfo"

// narinfoHash returns the hash part of a narinfo URL path.
func narinfoHash(p string) (string, error) {
	hash := strings.TrimSuffix(strings.TrimPrefix(p, "/"), narinfoSuffix)
	if err := storepath.ValidateHashPart(hash); err != nil {
		return "", clientError(http.StatusBadRequest, "bad narinfo URL: %v", err)
	}
	return hash, nil
}

// getNarinfo answers GET and HEAD /<hash>.narinfo.
func (h *Handler) getNarinfo(w http.ResponseWriter, r *http.Request) {
	hash, err := narinfoHash(r.URL.Path)
	if err != nil {
		h.writeError(w, r, err)
		return
	}
	if e, ok := h.narinfos.get(hash); ok {
		writeCachedNarinfo(w, e)
		return
	}
	tok := h.narinfos.begin(hash)
	ctx, cancel := h.unary(r.Context())
	defer cancel()
	resp, err := h.Index.GetPathInfo(ctx, &indexv1.GetPathInfoRequest{HashPart: hash})
	if err != nil {
		if st, ok := status.FromError(err); ok && st.Code() == codes.NotFound {
			h.narinfos.finish(tok, false, st.Message())
		} else {
			h.narinfos.abandon(tok)
		}
		h.writeError(w, r, err)
		return
	}
	ni, err := toNarInfo(resp.GetInfo())
	if err != nil {
		h.narinfos.abandon(tok)
		h.writeError(w, r, fmt.Errorf("path info of %s from index: %w", hash, err))
		return
	}
	body := ni.String()
	h.narinfos.finish(tok, true, body)
	writeNarinfo(w, body)
}

// writeNarinfo answers with a rendered narinfo.
func writeNarinfo(w http.ResponseWriter, body string) {
	w.Header().Set("Content-Type", narinfoContentType[0])
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	io.WriteString(w, body)
}

// Header values of cached answers, shared by every response (net/http
// only reads them; an Add would copy, their capacity being their length).
var (
	narinfoContentType = []string{"text/x-nix-narinfo"}
	textContentType    = []string{"text/plain; charset=utf-8"}
	noSniff            = []string{"nosniff"}
)

// writeCachedNarinfo answers with a cached narinfo, or a cached 404 as
// writeError would have written it, allocating nothing.
func writeCachedNarinfo(w http.ResponseWriter, e *narinfoEntry) {
	hdr := w.Header()
	if !e.found {
		hdr["Content-Type"] = textContentType
		hdr["X-Content-Type-Options"] = noSniff
		w.WriteHeader(http.StatusNotFound)
		io.WriteString(w, e.body)
		io.WriteString(w, "\n")
		return
	}
	hdr["Content-Type"] = narinfoContentType
	hdr["Content-Length"] = e.length
	io.WriteString(w, e.body)
}

// toNarInfo renders the index's PathInfo as a narinfo.
func toNarInfo(info *indexv1.PathInfo) (*narinfo.NarInfo, error) {
	if info == nil {
		return nil, errors.New("empty path info")
	}
	narHash, err := nixhash.Parse(info.GetNarHash())
	if err != nil {
		return nil, fmt.Errorf("nar hash: %w", err)
	}
	ni := &narinfo.NarInfo{
		StorePath:   info.GetStorePath(),
		URL:         info.GetUrl(),
		Compression: compression.None,
		NarHash:     narHash,
		NarSize:     info.GetNarSize(),
		References:  info.GetReferences(),
		Deriver:     info.GetDeriver(),
		Sigs:        info.GetSignatures(),
		CA:          info.GetCa(),
	}
	if f := info.GetFile(); f != nil {
		if c := f.GetCompression(); c != "" {
			ni.Compression = c
		}
		ni.FileSize = f.GetFileSize()
		if f.GetFileHash() != "" {
			if ni.FileHash, err = nixhash.Parse(f.GetFileHash()); err != nil {
				return nil, fmt.Errorf("file hash: %w", err)
			}
		}
	}
	if ni.URL == "" {
		// A path without a stored file is served the nix-serve way.
		hash := strings.TrimPrefix(ni.StorePath, "/")
		if i := strings.LastIndexByte(hash, '/'); i >= 0 {
			hash = hash[i+1:]
		}
		if len(hash) < storepath.HashPartLen {
			return nil, fmt.Errorf("store path %q: too short", ni.StorePath)
		}
		ni.URL = "nar/" + hash[:storepath.HashPartLen] + "-" + narHash.NixBase32() + ".nar"
		ni.Compression = compression.None
	}
	return ni, nil
}

// putNarinfo answers PUT /<hash>.narinfo: it publishes the store path via
// the index, which verifies and signs it.
func (h *Handler) putNarinfo(w http.ResponseWriter, r *http.Request) {
	id, err := pushIdentity(r)
	if err != nil {
		h.writeError(w, r, err)
		return
	}
	hash, err := narinfoHash(r.URL.Path)
	if err != nil {
		h.writeError(w, r, err)
		return
	}
	data, err := h.readNarinfoBody(w, r)
	if err != nil {
		h.writeError(w, r, err)
		return
	}
	ni, err := narinfo.Parse(bytes.NewReader(data), h.StoreDir)
	if err != nil {
		h.writeError(w, r, clientError(http.StatusBadRequest, "bad narinfo: %v", err))
		return
	}
	sp, err := storepath.Parse(h.StoreDir, ni.StorePath)
	if err != nil {
		h.writeError(w, r, clientError(http.StatusBadRequest, "bad narinfo: %v", err))
		return
	}
	if sp.HashPart != hash {
		h.writeError(w, r, clientError(http.StatusBadRequest,
			"narinfo for %s was PUT to /%s.narinfo: the URL must name the store path's hash part %s", ni.StorePath, hash, sp.HashPart))
		return
	}
	if err := checkNarinfoURL(ni.URL); err != nil {
		h.writeError(w, r, clientError(http.StatusBadRequest, "bad narinfo: %v", err))
		return
	}
	if !id.MayPublish(sp.Name) {
		h.writeError(w, r, clientError(http.StatusForbidden, "token %q may only publish store paths named %q, not %s",
			id.Name, id.PushPattern, sp.Name))
		return
	}
	// This gateway's cached answer, if any, is dropped (and others' when
	// the index reports the path published).
	h.narinfos.invalidate(hash)
	ctx, cancel := h.unary(r.Context())
	defer cancel()
	if _, err := h.Index.PutPathInfo(ctx, &indexv1.PutPathInfoRequest{Info: toPathInfo(ni)}); err != nil {
		h.writeError(w, r, err)
		return
	}
	// And again: a 404 a concurrent lookup cached before the commit would
	// last until the index's event arrives; the pusher reads its write.
	h.narinfos.invalidate(hash)
	w.WriteHeader(http.StatusNoContent)
}

// checkNarinfoURL refuses a pushed narinfo's URL that could name
// something outside the cache: absolute, or with a ".", ".." or empty
// segment, a backslash or a control character. The index serves its own
// URL, but a hostile one is a mistake to answer, not to store.
func checkNarinfoURL(u string) error {
	if u == "" {
		return nil
	}
	if strings.ContainsAny(u, "\\:?#") || strings.IndexFunc(u, func(r rune) bool { return r < 0x20 || r == 0x7f }) >= 0 {
		return fmt.Errorf("URL %q: want a relative path such as nar/<file hash>.nar.xz", u)
	}
	for _, seg := range strings.Split(u, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return fmt.Errorf("URL %q: want a relative path such as nar/<file hash>.nar.xz", u)
		}
	}
	return nil
}

// toPathInfo converts a pushed narinfo for the index.
func toPathInfo(ni *narinfo.NarInfo) *indexv1.PathInfo {
	return &indexv1.PathInfo{
		StorePath:  ni.StorePath,
		NarHash:    ni.NarHash.String(),
		NarSize:    ni.NarSize,
		References: ni.References,
		Deriver:    ni.Deriver,
		Signatures: ni.Sigs,
		Ca:         ni.CA,
		Url:        ni.URL,
		File: &indexv1.NarFile{
			FileHash:    ni.FileHash.String(),
			FileSize:    ni.FileSize,
			Compression: ni.EffectiveCompression(),
		},
	}
}

// readNarinfoBody reads a pushed narinfo, decoded as its Content-Encoding
// says, at most MaxNarinfoSize bytes before and after decoding.
// narinfoReadTimeout bounds how long reading a narinfo body may take.
const narinfoReadTimeout = 15 * time.Second

func (h *Handler) readNarinfoBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	limit := h.MaxNarinfoSize
	encoding := strings.ToLower(strings.TrimSpace(r.Header.Get("Content-Encoding")))
	if !supportedEncoding(encoding) {
		return nil, clientError(http.StatusUnsupportedMediaType,
			"unsupported Content-Encoding %q (want xz, zstd, bzip2, gzip or br)", encoding)
	}
	// A narinfo is small: a body that does not arrive promptly is not
	// coming (Nix 2.8 retries a refused PUT without resending its body).
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Now().Add(narinfoReadTimeout))
	defer rc.SetReadDeadline(time.Time{})
	body := &readErr{r: http.MaxBytesReader(w, r.Body, limit)}
	data, err := readDecoded(encoding, body, limit)
	// A decoder may hide the body's own error behind one of its own.
	var tooLarge *http.MaxBytesError
	switch {
	case err == nil && int64(len(data)) > limit:
		return nil, clientError(http.StatusRequestEntityTooLarge, "narinfo decodes to more than %d bytes (-max-narinfo-size)", limit)
	case err == nil:
		return data, nil
	case errors.As(body.err, &tooLarge):
		return nil, clientError(http.StatusRequestEntityTooLarge, "narinfo is larger than %d bytes (-max-narinfo-size)", limit)
	case errors.Is(body.err, os.ErrDeadlineExceeded):
		return nil, clientError(http.StatusRequestTimeout, "narinfo body not received within %s", narinfoReadTimeout)
	case body.err != nil:
		return nil, clientError(http.StatusBadRequest, "read narinfo: %v", body.err)
	default:
		return nil, clientError(http.StatusBadRequest, "decode narinfo (Content-Encoding %s): %v", encoding, err)
	}
}

// readDecoded reads up to limit+1 decoded bytes of body.
func readDecoded(encoding string, body io.Reader, limit int64) ([]byte, error) {
	dec, err := decoder(encoding, body)
	if err != nil {
		return nil, err
	}
	defer dec.Close()
	return io.ReadAll(io.LimitReader(dec, limit+1))
}

// readErr remembers the error its reader returned, other than io.EOF.
type readErr struct {
	r   io.Reader
	err error
}

func (e *readErr) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && err != io.EOF {
		e.err = err
	}
	return n, err
}

// decoder returns a reader decoding body by a Content-Encoding, as Nix's
// narinfo-compression option sets it.
func decoder(encoding string, body io.Reader) (io.ReadCloser, error) {
	switch encoding {
	case "", "identity", compression.None:
		return io.NopCloser(body), nil
	case compression.XZ, compression.Zstd, compression.Bzip2:
		return compression.NewReader(encoding, body)
	case "gzip", "x-gzip":
		return gzip.NewReader(body)
	case "br":
		return io.NopCloser(brotli.NewReader(body)), nil
	default:
		return nil, fmt.Errorf("unsupported Content-Encoding %q", encoding)
	}
}

// supportedEncoding reports whether decoder knows encoding.
func supportedEncoding(encoding string) bool {
	switch encoding {
	case "", "identity", compression.None, compression.XZ, compression.Zstd, compression.Bzip2, "gzip", "x-gzip", "br":
		return true
	}
	return false
}
