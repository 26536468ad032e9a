// Package server is the gRPC face of the index: nixcache.index.v1.
// IndexService over the catalogue, the NAR store and the publisher. It
// validates requests and maps domain errors to status codes (errors.go).
package server

import (
	"context"
	"errors"
	"io"
	"log/slog"

	"github.com/nixcache/nixcache/nix/nixhash"
	"github.com/nixcache/nixcache/nix/storepath"
	"github.com/nixcache/nixcache/platform/grpcutil"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/catalog"
	"github.com/nixcache/nixcache/services/index/internal/fault"
	"github.com/nixcache/nixcache/services/index/internal/narstore"
	"github.com/nixcache/nixcache/services/index/internal/publish"
)

// MaxCheckPaths is the most hash parts one CheckPaths call may ask about.
const MaxCheckPaths = 10000

// Server implements indexv1.IndexServiceServer.
type Server struct {
	indexv1.UnimplementedIndexServiceServer

	log       *slog.Logger
	catalog   *catalog.Catalog
	nars      *narstore.Store
	publisher *publish.Publisher
}

// New returns the service over its parts.
func New(log *slog.Logger, c *catalog.Catalog, nars *narstore.Store, p *publish.Publisher) *Server {
	return &Server{log: log, catalog: c, nars: nars, publisher: p}
}

// PutNar receives, verifies and stores one NAR file.
func (s *Server) PutNar(stream indexv1.IndexService_PutNarServer) error {
	ctx := stream.Context()
	first, err := stream.Recv()
	if err == io.EOF {
		return toStatus(fault.Invalid("empty request: the first message must be a header"))
	}
	if err != nil {
		return toStatus(err)
	}
	hdr := first.GetHeader()
	if hdr == nil {
		return toStatus(fault.Invalid("the first message must be a header, not data"))
	}
	var want narstore.Expect
	if h := hdr.GetExpectedFileHash(); h != "" {
		if want.FileHash, err = nixhash.ParseAs(nixhash.SHA256, h); err != nil {
			return toStatus(fault.Invalid("expected_file_hash: %v", err))
		}
	}
	want.Compression = hdr.GetExpectedCompression()

	nf, err := s.nars.Ingest(ctx, &chunkReader{stream: stream}, want)
	if err != nil {
		if errors.Is(err, fault.ErrInvalid) {
			s.log.WarnContext(ctx, "refused NAR upload", "err", err)
		}
		return toStatus(err)
	}
	fileHash, _ := nixhash.Parse(nf.GetFileHash())
	stored, err := s.catalog.AddNarFile(fileHash.NixBase32(), nf)
	if err != nil {
		return toStatus(err)
	}
	s.log.InfoContext(ctx, "stored NAR file", "file_hash", stored.GetFileHash(), "file_size", stored.GetFileSize(),
		"compression", stored.GetCompression(), "nar_hash", stored.GetNarHash(), "nar_size", stored.GetNarSize())
	return stream.SendAndClose(&indexv1.PutNarResponse{File: stored})
}

// chunkReader reads the data chunks of a PutNar stream.
type chunkReader struct {
	stream indexv1.IndexService_PutNarServer
	buf    []byte
}

func (r *chunkReader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		msg, err := r.stream.Recv()
		if err != nil {
			return 0, err // io.EOF at the end
		}
		if msg.GetHeader() != nil {
			return 0, fault.Invalid("a second header after the first message")
		}
		r.buf = msg.GetChunk()
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

// StatNar describes a stored NAR file.
func (s *Server) StatNar(ctx context.Context, req *indexv1.StatNarRequest) (*indexv1.StatNarResponse, error) {
	nf, err := s.narFile(req.GetFileHash())
	if err != nil {
		return nil, toStatus(err)
	}
	return &indexv1.StatNarResponse{File: nf}, nil
}

// narFile looks a NAR file up by "sha256:<nix32>" or bare nix32 hash.
func (s *Server) narFile(fileHash string) (*indexv1.NarFile, error) {
	if fileHash == "" {
		return nil, fault.Invalid("file_hash is empty")
	}
	h, err := nixhash.ParseAs(nixhash.SHA256, fileHash)
	if err != nil {
		return nil, fault.Invalid("file_hash: %v", err)
	}
	return s.catalog.NarFile(h.NixBase32())
}

// GetNar streams a stored file, or a published path's NAR uncompressed.
func (s *Server) GetNar(req *indexv1.GetNarRequest, stream indexv1.IndexService_GetNarServer) error {
	ctx := stream.Context()
	var (
		nf         *indexv1.NarFile
		decompress bool
		err        error
	)
	switch sel := req.GetSelector().(type) {
	case *indexv1.GetNarRequest_FileHash:
		nf, err = s.narFile(sel.FileHash)
	case *indexv1.GetNarRequest_StoreHash:
		nf, err = s.pathNar(sel.StoreHash)
		decompress = true
	default:
		err = fault.Invalid("no selector: set file_hash or store_hash")
	}
	if err != nil {
		return toStatus(err)
	}
	if want := req.GetExpectedNarHash(); want != "" {
		h, err := nixhash.Parse(want)
		if err != nil {
			return toStatus(fault.Invalid("expected_nar_hash: %v", err))
		}
		if h.String() != nf.GetNarHash() {
			return toStatus(fault.NotFound("the NAR has hash %s, not %s", nf.GetNarHash(), h))
		}
	}

	rg, err := s.nars.Open(ctx, nf, decompress, req.GetOffset(), req.GetLength())
	if err != nil {
		return toStatus(err)
	}
	defer rg.Close()
	err = stream.Send(&indexv1.GetNarResponse{Msg: &indexv1.GetNarResponse_Header{Header: &indexv1.GetNarHeader{
		TotalSize:   rg.Total,
		Compression: rg.Compression,
	}}})
	if err != nil {
		return err
	}
	for left := rg.Length; left > 0; {
		// A fresh buffer per Send: gRPC may still hold the last one.
		buf := make([]byte, min(left, grpcutil.ChunkSize))
		n, err := io.ReadFull(rg, buf)
		if err != nil {
			return toStatus(err)
		}
		left -= uint64(n)
		if err := stream.Send(&indexv1.GetNarResponse{Msg: &indexv1.GetNarResponse_Chunk{Chunk: buf}}); err != nil {
			return err
		}
	}
	return nil
}

// pathNar is the NAR file of the published path with this hash part.
func (s *Server) pathNar(hashPart string) (*indexv1.NarFile, error) {
	if err := storepath.ValidateHashPart(hashPart); err != nil {
		return nil, fault.Invalid("store_hash: %v", err)
	}
	info, err := s.catalog.PathInfo(hashPart)
	if err != nil {
		return nil, err
	}
	if info.GetFile() == nil {
		return nil, fault.NotFound("store path %s has no NAR file", info.GetStorePath())
	}
	return info.GetFile(), nil
}

// PutPathInfo verifies, signs and publishes a store path.
func (s *Server) PutPathInfo(ctx context.Context, req *indexv1.PutPathInfoRequest) (*indexv1.PutPathInfoResponse, error) {
	info, err := s.publisher.Publish(ctx, req.GetInfo())
	if err != nil {
		s.log.WarnContext(ctx, "refused to publish", "store_path", req.GetInfo().GetStorePath(), "err", err)
		return nil, toStatus(err)
	}
	s.log.InfoContext(ctx, "published path", "store_path", info.GetStorePath(), "nar_hash", info.GetNarHash(),
		"signatures", len(info.GetSignatures()))
	return &indexv1.PutPathInfoResponse{Info: info}, nil
}

// GetPathInfo looks a published path up.
func (s *Server) GetPathInfo(ctx context.Context, req *indexv1.GetPathInfoRequest) (*indexv1.GetPathInfoResponse, error) {
	if err := storepath.ValidateHashPart(req.GetHashPart()); err != nil {
		return nil, toStatus(fault.Invalid("hash_part: %v", err))
	}
	info, err := s.catalog.PathInfo(req.GetHashPart())
	if err != nil {
		return nil, toStatus(err)
	}
	return &indexv1.GetPathInfoResponse{Info: info}, nil
}

// CheckPaths tells which hash parts are published.
func (s *Server) CheckPaths(ctx context.Context, req *indexv1.CheckPathsRequest) (*indexv1.CheckPathsResponse, error) {
	hashes := req.GetHashParts()
	if len(hashes) > MaxCheckPaths {
		return nil, toStatus(fault.Invalid("%d hash parts: at most %d per call", len(hashes), MaxCheckPaths))
	}
	for i, h := range hashes {
		if err := storepath.ValidateHashPart(h); err != nil {
			return nil, toStatus(fault.Invalid("hash_parts[%d]: %v", i, err))
		}
	}
	present, err := s.catalog.PresentPaths(hashes)
	if err != nil {
		return nil, toStatus(err)
	}
	return &indexv1.CheckPathsResponse{Present: present}, nil
}
