package server

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nixcache/nixcache/nix/storepath"
	"github.com/nixcache/nixcache/platform/auth"
	"github.com/nixcache/nixcache/platform/grpcutil"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/artifact"
	"github.com/nixcache/nixcache/services/index/internal/fault"
)

// WithArtifacts makes s store and serve side files (PutArtifact,
// GetArtifact) in a; logDir, when not "", is the host's build-log
// directory (/nix/var/log/nix/drvs) looked in for logs not pushed.
func (s *Server) WithArtifacts(a *artifact.Store, logDir string) *Server {
	s.artifacts, s.logDir = a, logDir
	return s
}

// PutArtifact stores one side file.
func (s *Server) PutArtifact(stream indexv1.IndexService_PutArtifactServer) error {
	ctx := stream.Context()
	if s.artifacts == nil {
		return fault.Status(fault.Precondition("this index stores no side files"))
	}
	done, err := s.startUpload()
	if err != nil {
		s.log.WarnContext(ctx, "refused artifact", "err", err)
		return fault.Status(err)
	}
	defer done()
	hdr, chunks, err := recvUpload(stream.Recv, nil)
	if err != nil {
		return fault.Status(err)
	}
	if err := artifact.ValidateKey(hdr.GetKind(), hdr.GetKey()); err != nil {
		return fault.Status(err)
	}
	if err := mayWriteArtifact(ctx, hdr.GetKind(), hdr.GetKey()); err != nil {
		s.log.WarnContext(ctx, "refused artifact", "kind", hdr.GetKind().String(), "err", err)
		return err
	}
	n, err := s.artifacts.Put(hdr.GetKind(), hdr.GetKey(), hdr.GetContentEncoding(), chunks)
	if err != nil {
		if errors.Is(err, fault.ErrInvalid) {
			s.log.WarnContext(ctx, "refused artifact", "kind", hdr.GetKind().String(), "err", err)
		}
		return fault.Status(err)
	}
	s.log.InfoContext(ctx, "stored artifact", "kind", hdr.GetKind().String(), "key", hdr.GetKey(),
		"content_encoding", hdr.GetContentEncoding(), "size", n)
	return stream.SendAndClose(&indexv1.PutArtifactResponse{Size: uint64(n)})
}

// mayWriteArtifact holds a token limited to some store-path names (its
// push pattern) to them for artifacts too: a build log only of a
// derivation of such a name; realisations and debug-info links, which
// point at store paths of any name, not at all. Listings are let through:
// Nix uploads one before the narinfo that names its path, and no
// substitution reads them.
func mayWriteArtifact(ctx context.Context, kind indexv1.ArtifactKind, key string) error {
	id, ok := auth.IdentityFrom(ctx)
	if !ok || id.PushPattern == "" {
		return nil
	}
	switch kind {
	case indexv1.ArtifactKind_ARTIFACT_KIND_LOG:
		if p, err := storepath.ParseBase(key); err == nil && id.MayPublish(strings.TrimSuffix(p.Name, ".drv")) {
			return nil
		}
	case indexv1.ArtifactKind_ARTIFACT_KIND_LISTING:
		return nil
	}
	return status.Errorf(codes.PermissionDenied, "token %q may only push store paths named %q: not the %s %s",
		id.Name, id.PushPattern, strings.ToLower(strings.TrimPrefix(kind.String(), "ARTIFACT_KIND_")), key)
}

// GetArtifact streams one side file: stored, or a host build log, or a
// listing made from a published path's NAR (and stored).
func (s *Server) GetArtifact(req *indexv1.GetArtifactRequest, stream indexv1.IndexService_GetArtifactServer) error {
	ctx := stream.Context()
	if s.artifacts == nil {
		return fault.Status(fault.NotFound("this index stores no side files"))
	}
	kind, key := req.GetKind(), req.GetKey()
	if err := artifact.ValidateKey(kind, key); err != nil {
		return fault.Status(err)
	}
	var (
		r    io.Reader
		size int64
		enc  string
	)
	f, err := s.artifacts.Open(kind, key)
	switch {
	case err == nil:
		defer f.Close()
		r, size, enc = f, f.Size, f.Encoding
	case !errors.Is(err, fault.ErrNotFound):
		return fault.Status(err)
	case kind == indexv1.ArtifactKind_ARTIFACT_KIND_LOG && s.logDir != "" && s.local != nil:
		f, err := artifact.OpenLocalLog(s.logDir, key)
		if err != nil {
			return fault.Status(err)
		}
		defer f.Close()
		r, size, enc = f, f.Size, f.Encoding
	case kind == indexv1.ArtifactKind_ARTIFACT_KIND_LISTING:
		data, err := s.makeListing(ctx, key)
		if err != nil {
			return fault.Status(err)
		}
		r, size, enc = bytes.NewReader(data), int64(len(data)), "none"
	default:
		return fault.Status(err)
	}
	err = stream.Send(&indexv1.GetArtifactResponse{Msg: &indexv1.GetArtifactResponse_Header{Header: &indexv1.GetArtifactHeader{
		Size: uint64(size), ContentEncoding: enc,
	}}})
	if err != nil {
		return err
	}
	for left := size; left > 0; {
		buf := make([]byte, min(left, grpcutil.ChunkSize))
		n, err := io.ReadFull(r, buf)
		if err != nil {
			return fault.Status(err)
		}
		left -= int64(n)
		if err := stream.Send(&indexv1.GetArtifactResponse{Msg: &indexv1.GetArtifactResponse_Chunk{Chunk: buf}}); err != nil {
			return err
		}
	}
	return nil
}

// makeListing lists the NAR of the published path hashPart and stores
// the listing for the next time.
func (s *Server) makeListing(ctx context.Context, hashPart string) ([]byte, error) {
	rg, err := s.openNar(ctx, &indexv1.GetNarRequest{Selector: &indexv1.GetNarRequest_StoreHash{StoreHash: hashPart}})
	if err != nil {
		return nil, err
	}
	defer rg.Close()
	data, err := artifact.MakeListing(rg)
	if err != nil {
		return nil, err
	}
	if len(data) > artifact.MaxListingSize {
		return nil, fault.Precondition("the listing of %s is larger than %d bytes", hashPart, artifact.MaxListingSize)
	}
	if _, err := s.artifacts.Put(indexv1.ArtifactKind_ARTIFACT_KIND_LISTING, hashPart, "", bytes.NewReader(data)); err != nil {
		s.log.WarnContext(ctx, "could not keep a NAR listing", "hash_part", hashPart, "err", err)
	}
	return data, nil
}
