package httpapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/nixcache/nixcache/nix/compression"
	"github.com/nixcache/nixcache/nix/storepath"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
)

// Artifacts are the files of a binary cache beside narinfos and NARs:
// build logs (log/<drv>), NAR listings (<hash>.ls), realisations of
// content-addressed derivations (realisations/<id>.doi) and debug-info
// links (debuginfo/<build id>). The index stores them and validates their
// keys and contents; the gateway checks the URL's form, bounds bodies and
// handles encodings.

const (
	logPrefix         = "/log/"
	listingSuffix     = ".ls"
	realisationPrefix = "/realisations/"
	realisationSuffix = ".doi"
	debugInfoPrefix   = "/debuginfo/"
)

// artifactLimits bound an uploaded artifact, by kind (the index's limits).
var artifactLimits = map[indexv1.ArtifactKind]int64{
	indexv1.ArtifactKind_ARTIFACT_KIND_LOG:         256 << 20,
	indexv1.ArtifactKind_ARTIFACT_KIND_LISTING:     64 << 20,
	indexv1.ArtifactKind_ARTIFACT_KIND_REALISATION: 64 << 10,
	indexv1.ArtifactKind_ARTIFACT_KIND_DEBUG_INFO:  64 << 10,
}

// artifactTarget is what an artifact URL names.
type artifactTarget struct {
	kind indexv1.ArtifactKind
	key  string
}

func isLogPath(p string) bool { return strings.HasPrefix(p, logPrefix) }

func isListingPath(p string) bool {
	name, ok := strings.CutSuffix(p, listingSuffix)
	return ok && len(name) > 1 && !strings.Contains(name[1:], "/")
}

func isRealisationPath(p string) bool { return strings.HasPrefix(p, realisationPrefix) }

func isDebugInfoPath(p string) bool { return strings.HasPrefix(p, debugInfoPrefix) }

// parseArtifactPath checks an artifact URL path; the index checks the
// keys strictly again.
func parseArtifactPath(p string) (artifactTarget, error) {
	switch {
	case isLogPath(p):
		drv := strings.TrimPrefix(p, logPrefix)
		sp, err := storepath.ParseBase(drv)
		if err == nil && !strings.HasSuffix(sp.Name, ".drv") {
			err = errors.New("not a derivation (no .drv suffix)")
		}
		if err != nil {
			return artifactTarget{}, clientError(http.StatusBadRequest, "bad build log URL: log/<hash>-<name>.drv: %v", err)
		}
		return artifactTarget{indexv1.ArtifactKind_ARTIFACT_KIND_LOG, drv}, nil
	case isListingPath(p):
		hash := strings.TrimSuffix(strings.TrimPrefix(p, "/"), listingSuffix)
		if err := storepath.ValidateHashPart(hash); err != nil {
			return artifactTarget{}, clientError(http.StatusBadRequest, "bad NAR listing URL: <hash part>.ls: %v", err)
		}
		return artifactTarget{indexv1.ArtifactKind_ARTIFACT_KIND_LISTING, hash}, nil
	case isRealisationPath(p):
		id, ok := strings.CutSuffix(strings.TrimPrefix(p, realisationPrefix), realisationSuffix)
		if !ok || id == "" || strings.Contains(id, "/") {
			return artifactTarget{}, clientError(http.StatusBadRequest, "bad realisation URL: want realisations/sha256:<hash>!<output>.doi")
		}
		return artifactTarget{indexv1.ArtifactKind_ARTIFACT_KIND_REALISATION, id}, nil
	case isDebugInfoPath(p):
		// Nix 2.8 names the file debuginfo/<build id>.debug; later
		// versions drop the suffix. Both name the same link.
		id := strings.TrimSuffix(strings.TrimPrefix(p, debugInfoPrefix), ".debug")
		if id == "" || strings.Contains(id, "/") {
			return artifactTarget{}, clientError(http.StatusBadRequest, "bad debug info URL: want debuginfo/<hex build id>")
		}
		return artifactTarget{indexv1.ArtifactKind_ARTIFACT_KIND_DEBUG_INFO, id}, nil
	}
	return artifactTarget{}, clientError(http.StatusNotFound, "not found")
}

func (t artifactTarget) contentType() string {
	if t.kind == indexv1.ArtifactKind_ARTIFACT_KIND_LOG {
		return "text/plain; charset=utf-8"
	}
	return "application/json"
}

// getArtifact answers GET and HEAD of an artifact: as stored, with its
// Content-Encoding when the client accepts that encoding, else decoded.
func (h *Handler) getArtifact(w http.ResponseWriter, r *http.Request) {
	t, err := parseArtifactPath(r.URL.Path)
	if err != nil {
		h.writeError(w, r, err)
		return
	}
	ctx, cancel := context.WithCancelCause(r.Context())
	defer cancel(nil)
	guard := h.newStallGuard(cancel)
	var stream indexv1.IndexService_GetArtifactClient
	if err := guard.open("side-file", func() (err error) {
		stream, err = h.Index.GetArtifact(ctx, &indexv1.GetArtifactRequest{Kind: t.kind, Key: t.key})
		return err
	}); err != nil {
		h.writeError(w, r, stalledError(ctx, err))
		return
	}
	hdr, err := recvHeader(h, ctx, cancel, stream.Recv, "side-file")
	if err != nil {
		h.writeError(w, r, err)
		return
	}
	body := &artifactStream{stream: guardRecv(stream, guard), left: hdr.GetSize()}
	var out io.Reader = body
	enc := hdr.GetContentEncoding()
	w.Header().Set("Content-Type", t.contentType())
	w.Header().Add("Vary", "Accept-Encoding")
	if enc == "" || enc == compression.None || acceptsEncoding(r, enc) {
		if enc != "" && enc != compression.None {
			w.Header().Set("Content-Encoding", enc)
		}
		w.Header().Set("Content-Length", fmt.Sprint(hdr.GetSize()))
	} else {
		// A log stored compressed (before logs were stored decoded) is
		// decoded for this client, no further than an upload may be.
		dec, err := compression.NewReader(enc, body)
		if err != nil {
			h.writeError(w, r, err)
			return
		}
		defer dec.Close()
		out = &limitedDecode{r: dec, left: artifactLimits[t.kind]}
	}
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return
	}
	if _, err := io.Copy(w, out); err != nil {
		h.Log.WarnContext(r.Context(), "side file stream cut", "path", r.URL.Path, "err", stalledError(ctx, err))
	}
}

// acceptsEncoding reports whether r's Accept-Encoding lists enc.
func acceptsEncoding(r *http.Request, enc string) bool {
	for _, v := range r.Header.Values("Accept-Encoding") {
		for _, part := range strings.Split(v, ",") {
			name, params, _ := strings.Cut(strings.TrimSpace(part), ";")
			if strings.EqualFold(strings.TrimSpace(name), enc) && !strings.Contains(strings.ReplaceAll(params, " ", ""), "q=0") {
				return true
			}
		}
	}
	return false
}

// artifactStream reads the data chunks of a GetArtifact stream, exactly
// the announced size.
type artifactStream struct {
	stream indexv1.IndexService_GetArtifactClient
	buf    []byte
	left   uint64
}

func (s *artifactStream) Read(p []byte) (int, error) {
	for len(s.buf) == 0 {
		msg, err := s.stream.Recv()
		if err == io.EOF {
			if s.left > 0 {
				return 0, io.ErrUnexpectedEOF
			}
			return 0, io.EOF
		}
		if err != nil {
			return 0, err
		}
		if msg.GetHeader() != nil || uint64(len(msg.GetChunk())) > s.left {
			return 0, errors.New("index sent more than it announced")
		}
		s.buf = msg.GetChunk()
		s.left -= uint64(len(s.buf))
	}
	n := copy(p, s.buf)
	s.buf = s.buf[n:]
	return n, nil
}

// putArtifact answers PUT of an artifact: it streams the body, bounded
// and decoded from its Content-Encoding, to the index. A build log is
// stored decoded too, so that an invalid one is refused here, and reading
// one costs no decompression.
func (h *Handler) putArtifact(w http.ResponseWriter, r *http.Request) {
	t, err := parseArtifactPath(r.URL.Path)
	if err != nil {
		h.writeError(w, r, err)
		return
	}
	encoding := strings.ToLower(strings.TrimSpace(r.Header.Get("Content-Encoding")))
	if !supportedEncoding(encoding) {
		h.writeError(w, r, clientError(http.StatusUnsupportedMediaType,
			"unsupported Content-Encoding %q (want xz, zstd, bzip2, gzip or br)", encoding))
		return
	}
	body := newUpload(w, r, r.URL.Path, artifactLimits[t.kind])
	dec, err := body.decode(encoding)
	if err != nil {
		h.writeError(w, r, err)
		return
	}
	defer dec.Close()

	header := &indexv1.PutArtifactRequest{Msg: &indexv1.PutArtifactRequest_Header{Header: &indexv1.PutArtifactHeader{
		Kind: t.kind, Key: t.key, ContentEncoding: compression.None,
	}}}
	err = sendUpload(h, w, r, body, "side-file upload",
		func(ctx context.Context) (indexv1.IndexService_PutArtifactClient, error) {
			return h.Index.PutArtifact(ctx)
		},
		header,
		func(chunk []byte) *indexv1.PutArtifactRequest {
			return &indexv1.PutArtifactRequest{Msg: &indexv1.PutArtifactRequest_Chunk{Chunk: chunk}}
		})
	if err != nil {
		h.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
