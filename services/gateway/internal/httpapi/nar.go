package httpapi

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nixcache/nixcache/nix/compression"
	"github.com/nixcache/nixcache/nix/nixbase32"
	"github.com/nixcache/nixcache/nix/nixhash"
	"github.com/nixcache/nixcache/nix/storepath"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
)

const (
	narPrefix      = "/nar/"
	narExt         = ".nar"
	narContentType = "application/x-nix-nar"
)

// fileHashLen is the length of a sha256 digest in nix32.
var fileHashLen = nixbase32.EncodedLen(nixhash.SHA256.Size())

// narTarget is what a /nar/ URL names: a stored file by its hash
// ("nar/<file hash>.nar<ext>"), or, in nix-serve's forms, the uncompressed
// NAR of a store path ("nar/<store hash>.nar", "nar/<store hash>-<nar hash>.nar").
type narTarget struct {
	fileHash    string // "sha256:<nix32>" of the file; "" for the nix-serve forms
	compression string // the file's compression, from the extension; "none" for nix-serve forms
	storeHash   string // the store path's hash part, nix-serve forms only
	narHash     string // "sha256:<nix32>" the NAR must have; "" when not given
}

// parseNarPath parses a URL path under /nar/.
func parseNarPath(p string) (narTarget, error) {
	name := strings.TrimPrefix(p, narPrefix)
	base, ext, ok := strings.Cut(name, narExt)
	if !ok || strings.Contains(name, "/") {
		return narTarget{}, badNarURL(p)
	}
	comp, err := compression.FromExtension(ext)
	if err != nil {
		return narTarget{}, clientError(http.StatusBadRequest, "bad NAR URL %q: %v", p, err)
	}
	switch {
	case len(base) == fileHashLen:
		h, err := nixhash.ParseAs(nixhash.SHA256, base)
		if err != nil {
			return narTarget{}, clientError(http.StatusBadRequest, "bad NAR URL %q: file hash: %v", p, err)
		}
		return narTarget{fileHash: h.String(), compression: comp}, nil
	case comp != compression.None:
		return narTarget{}, clientError(http.StatusBadRequest, "bad NAR URL %q: the nix-serve forms nar/<store hash>[-<nar hash>].nar are uncompressed", p)
	case len(base) == storepath.HashPartLen:
		if err := storepath.ValidateHashPart(base); err != nil {
			return narTarget{}, clientError(http.StatusBadRequest, "bad NAR URL %q: %v", p, err)
		}
		return narTarget{storeHash: base, compression: compression.None}, nil
	case len(base) == storepath.HashPartLen+1+fileHashLen && base[storepath.HashPartLen] == '-':
		storeHash, narHash := base[:storepath.HashPartLen], base[storepath.HashPartLen+1:]
		if err := storepath.ValidateHashPart(storeHash); err != nil {
			return narTarget{}, clientError(http.StatusBadRequest, "bad NAR URL %q: %v", p, err)
		}
		h, err := nixhash.ParseAs(nixhash.SHA256, narHash)
		if err != nil {
			return narTarget{}, clientError(http.StatusBadRequest, "bad NAR URL %q: NAR hash: %v", p, err)
		}
		return narTarget{storeHash: storeHash, narHash: h.String(), compression: compression.None}, nil
	default:
		return narTarget{}, badNarURL(p)
	}
}

func badNarURL(p string) error {
	return clientError(http.StatusBadRequest,
		"bad NAR URL %q: want nar/<52-character nix32 file hash>.nar[.xz|.zst|.bz2], nar/<store hash>.nar or nar/<store hash>-<nar hash>.nar", p)
}

// getRequest is the GetNar request for t.
func (t narTarget) getRequest() *indexv1.GetNarRequest {
	if t.fileHash != "" {
		return &indexv1.GetNarRequest{Selector: &indexv1.GetNarRequest_FileHash{FileHash: t.fileHash}}
	}
	return &indexv1.GetNarRequest{
		Selector:        &indexv1.GetNarRequest_StoreHash{StoreHash: t.storeHash},
		ExpectedNarHash: t.narHash,
	}
}

// errNoSuchNar is the answer for a NAR the index has, but not in the form
// the URL asks for.
func errNoSuchNar(p string, why string) error {
	return clientError(http.StatusNotFound, "no NAR at %s: %s", p, why)
}

// narSize returns the size of the representation t names, checking that
// it is served in the form the URL asks for.
func (h *Handler) narSize(ctx context.Context, p string, t narTarget) (uint64, error) {
	ctx, cancel := h.unary(ctx)
	defer cancel()
	if t.fileHash != "" {
		resp, err := h.Index.StatNar(ctx, &indexv1.StatNarRequest{FileHash: t.fileHash})
		if err != nil {
			return 0, err
		}
		if c := resp.GetFile().GetCompression(); c != t.compression {
			return 0, errNoSuchNar(p, "the file is compressed with "+c)
		}
		return resp.GetFile().GetFileSize(), nil
	}
	resp, err := h.Index.GetPathInfo(ctx, &indexv1.GetPathInfoRequest{HashPart: t.storeHash})
	if err != nil {
		return 0, err
	}
	if t.narHash != "" && !sameHash(resp.GetInfo().GetNarHash(), t.narHash) {
		return 0, errNoSuchNar(p, "the store path's NAR has another hash")
	}
	return resp.GetInfo().GetNarSize(), nil
}

// presignedNar asks the index for a presigned URL of the stored file t
// names; "" when the index cannot make one (its files are on its disk).
func (h *Handler) presignedNar(ctx context.Context, p string, t narTarget) (string, error) {
	ctx, cancel := h.unary(ctx)
	defer cancel()
	resp, err := h.Index.StatNar(ctx, &indexv1.StatNarRequest{FileHash: t.fileHash, Presign: true})
	if err != nil {
		return "", err
	}
	if c := resp.GetFile().GetCompression(); c != t.compression {
		return "", errNoSuchNar(p, "the file is compressed with "+c)
	}
	return resp.GetUrl(), nil
}

// sameHash reports whether two hash strings denote the same hash.
func sameHash(a, b string) bool {
	ha, errA := nixhash.Parse(a)
	hb, errB := nixhash.Parse(b)
	return errA == nil && errB == nil && ha.Equal(hb)
}

// setNarHeaders sets the headers every NAR answer carries.
func setNarHeaders(w http.ResponseWriter, length uint64) {
	w.Header().Set("Content-Type", narContentType)
	w.Header().Set("Content-Length", strconv.FormatUint(length, 10))
	w.Header().Set("Accept-Ranges", "bytes")
}

// headNar answers HEAD /nar/...; Nix asks before pushing a NAR.
func (h *Handler) headNar(w http.ResponseWriter, r *http.Request) {
	t, err := parseNarPath(r.URL.Path)
	if err != nil {
		h.writeError(w, r, err)
		return
	}
	size, err := h.narSize(r.Context(), r.URL.Path, t)
	if err != nil {
		h.writeError(w, r, err)
		return
	}
	setNarHeaders(w, size)
	w.WriteHeader(http.StatusOK)
}

// errHeaderTimeout cancels a NAR stream whose first message is late.
var errHeaderTimeout = errors.New("index did not start the NAR stream in time")

// streamMessage is the first message of an index stream (GetNar,
// GetArtifact): it must carry the stream's header.
type streamMessage[H comparable] interface {
	GetHeader() H
}

// recvHeader receives the first message of a stream, which must be its
// header, within RequestTimeout; what names the stream in errors.
func recvHeader[M streamMessage[H], H comparable](h *Handler, ctx context.Context, cancel context.CancelCauseFunc, recv func() (M, error), what string) (H, error) {
	var none H
	timer := time.AfterFunc(h.RequestTimeout, func() { cancel(errHeaderTimeout) })
	msg, err := recv()
	timer.Stop()
	if errors.Is(context.Cause(ctx), errHeaderTimeout) {
		return none, status.Error(codes.DeadlineExceeded, errHeaderTimeout.Error())
	}
	if err == io.EOF {
		return none, status.Errorf(codes.Internal, "index ended the %s stream without a header", what)
	}
	if err != nil {
		return none, err
	}
	hdr := msg.GetHeader()
	if hdr == none {
		return none, status.Errorf(codes.Internal, "index began the %s stream without a header", what)
	}
	return hdr, nil
}

// putNar answers PUT /nar/<file hash>.nar<ext>: it streams the body to the
// index, which verifies and stores it, or, through the index's upload
// spool (UploadSpool), writes it into a file the index then verifies.
func (h *Handler) putNar(w http.ResponseWriter, r *http.Request) {
	t, err := parseNarPath(r.URL.Path)
	if err == nil && t.fileHash == "" {
		err = clientError(http.StatusBadRequest, "bad NAR URL %q: upload to nar/<52-character nix32 file hash>.nar[.xz|.zst|.bz2]", r.URL.Path)
	}
	if err != nil {
		h.writeError(w, r, err)
		return
	}
	header := &indexv1.PutNarRequest{Msg: &indexv1.PutNarRequest_Header{Header: &indexv1.PutNarHeader{
		ExpectedFileHash:    t.fileHash,
		ExpectedCompression: t.compression,
	}}}
	// Streamed, the index bounds the size (-max-nar-size); spooled, the
	// gateway stops writing at it.
	var limit int64
	sp, err := h.spool(r)
	if err != nil {
		h.writeError(w, r, err)
		return
	}
	if sp != nil {
		defer sp.close()
		header.GetHeader().SpoolId, limit = sp.id, sp.limit
	}
	err = sendUpload(h, w, r, newUpload(w, r, "NAR upload", limit), "NAR upload",
		func(ctx context.Context) (indexv1.IndexService_PutNarClient, error) {
			stream, err := h.Index.PutNar(ctx, narUploadCodec())
			if err != nil || sp == nil {
				return stream, err
			}
			return &spoolStream{IndexService_PutNarClient: stream, sp: sp}, nil
		},
		header,
		func(chunk []byte) *indexv1.PutNarRequest {
			return &indexv1.PutNarRequest{Msg: &indexv1.PutNarRequest_Chunk{Chunk: chunk}}
		})
	if status.Code(err) == codes.AlreadyExists {
		// The same bytes are already stored: the upload has succeeded.
		err = nil
	}
	if err != nil {
		h.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// spool returns a file of the index's upload spool for the upload of r,
// nil when the upload is to be streamed (no spool configured, or none
// this gateway can use), or the answer when the index refused (503).
func (h *Handler) spool(r *http.Request) (*spooled, error) {
	if h.UploadSpool == "" {
		return nil, nil
	}
	ctx, cancel := h.unary(r.Context())
	sp, err := openSpool(ctx, h.UploadSpool)
	cancel()
	switch {
	case err == nil:
		return sp, nil
	case status.Code(err) == codes.Unavailable:
		// Past the index's bound on uploads at once, or no answer.
		return nil, err
	case errors.Is(err, os.ErrPermission):
		// Another user than the index's: it streams, and says so once.
		h.spoolDenied.Do(func() {
			h.Log.WarnContext(r.Context(), "the index's upload spool socket is not this gateway's to use; streaming uploads", "err", err)
		})
	case !errors.Is(err, errNoSpool):
		h.Log.WarnContext(r.Context(), "streaming the NAR upload instead", "err", err)
	}
	return nil, nil
}
