// Package server is the gRPC face of the index: nixcache.index.v1.
// IndexService over the catalogue, the NAR store and the publisher. It
// validates requests and maps domain errors to status codes (fault.Status).
package server

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nixcache/nixcache/nix/compression"
	"github.com/nixcache/nixcache/nix/nixhash"
	"github.com/nixcache/nixcache/nix/storepath"
	"github.com/nixcache/nixcache/platform/auth"
	"github.com/nixcache/nixcache/platform/grpcutil"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/artifact"
	"github.com/nixcache/nixcache/services/index/internal/catalog"
	"github.com/nixcache/nixcache/services/index/internal/fault"
	"github.com/nixcache/nixcache/services/index/internal/narstore"
	"github.com/nixcache/nixcache/services/index/internal/publish"
)

// MaxCheckPaths is the most hash parts one CheckPaths call may ask about.
const MaxCheckPaths = 10000

// LocalStore serves the paths of the host's Nix store (package
// localstore): signed path infos, presence, and NARs dumped from the store.
// Its errors are classified as the fault package says.
type LocalStore interface {
	// PathInfo returns the signed info of a local path.
	PathInfo(ctx context.Context, hashPart string) (*indexv1.PathInfo, error)
	// Find returns the info of a local path, signed or not.
	Find(ctx context.Context, hashPart string) (*indexv1.PathInfo, error)
	// Present returns the hash parts of local paths, in order, no repeats.
	Present(ctx context.Context, hashParts []string) ([]string, error)
	// OpenNar opens a byte range of a local path's NAR.
	OpenNar(ctx context.Context, info *indexv1.PathInfo, offset, length uint64) (*narstore.Range, error)
}

// Server implements indexv1.IndexServiceServer.
type Server struct {
	indexv1.UnimplementedIndexServiceServer

	log       *slog.Logger
	catalog   *catalog.Catalog
	nars      *narstore.Store
	publisher *publish.Publisher
	// local is nil unless the index serves the host's store. A pushed
	// path is always preferred to a local one of the same hash part.
	local LocalStore
	// artifacts holds build logs, listings, realisations and debug-info
	// links (artifact.go); nil stores none. logDir is the host's
	// build-log directory, "" for none.
	artifacts *artifact.Store
	logDir    string
	// upstream, when set, fetches the paths looked up and not found
	// (upstream.go).
	upstream Upstream
	// presignExpiry is how long a presigned URL of StatNar works; 0
	// makes none.
	presignExpiry time.Duration
	// downloads counts what gateways report with RecordDownloads; nil
	// counts nothing.
	downloads DownloadRecorder
	// spool, when set, holds the files co-located gateways spool uploads
	// into (PutNar's spool_id).
	spool Spool
	// copies, when set, are the compressed copies of host paths' NARs
	// (package hostnar), found by file hash beside the pushed files.
	copies HostCopies
	// uploads holds a token for each upload (PutNar, PutArtifact) being
	// received; nil: no bound (WithUploadLimit).
	uploads chan struct{}
	// tokens answers AuthenticateToken (tokens.go); nil knows none.
	tokens TokenChecker
}

// HostCopies are the compressed copies the index keeps of the NARs of
// the host's paths (package hostnar): their records are in the catalogue
// (catalog.HostNarByFile), their files under nars/host/.
type HostCopies interface {
	// Requested notes a download of a host path's NAR.
	Requested(hashPart string)
	// Used notes a download of a copy, by file hash.
	Used(fileHash string)
	// RelativePath is where the copy lies under nars/.
	RelativePath(nf *indexv1.NarFile) (string, error)
	// Open opens a byte range of a copy.
	Open(ctx context.Context, nf *indexv1.NarFile, offset, length uint64) (*narstore.Range, error)
	// OpenRetired opens a byte range of an evicted copy, made again.
	OpenRetired(ctx context.Context, hn catalog.HostNar, offset, length uint64) (*narstore.Range, error)
}

// WithHostCopies serves the compressed copies of host paths' NARs too.
func (s *Server) WithHostCopies(c HostCopies) *Server {
	s.copies = c
	return s
}

// WithUploadLimit bounds the uploads (PutNar, PutArtifact) received at
// once to n, each a decompression; past it an upload is refused at once
// with Unavailable, which the gateway answers 503 with Retry-After. 0: no
// bound.
func (s *Server) WithUploadLimit(n int) *Server {
	s.uploads = nil
	if n > 0 {
		s.uploads = make(chan struct{}, n)
	}
	return s
}

// startUpload takes an upload slot, or fails when all are taken; the
// returned function gives it back.
func (s *Server) startUpload() (func(), error) {
	if s.uploads == nil {
		return func() {}, nil
	}
	select {
	case s.uploads <- struct{}{}:
		return func() { <-s.uploads }, nil
	default:
		return nil, fault.Unavailable("too many uploads at once (the index takes %d, -max-concurrent-uploads): retry later", cap(s.uploads))
	}
}

// DownloadRecorder counts downloads that gateways served themselves.
type DownloadRecorder interface {
	RecordDownloads([]*indexv1.NarDownloads)
}

// WithDownloads has RecordDownloads count into r.
func (s *Server) WithDownloads(r DownloadRecorder) *Server {
	s.downloads = r
	return s
}

// New returns the service over its parts; local may be nil.
func New(log *slog.Logger, c *catalog.Catalog, nars *narstore.Store, p *publish.Publisher, local LocalStore) *Server {
	return &Server{log: log, catalog: c, nars: nars, publisher: p, local: local}
}

// PutNar receives, verifies and stores one NAR file.
func (s *Server) PutNar(stream indexv1.IndexService_PutNarServer) error {
	ctx := stream.Context()
	done, err := s.startUpload()
	if err != nil {
		s.log.WarnContext(ctx, "refused NAR upload", "err", err)
		return fault.Status(err)
	}
	defer done()
	hdr, chunks, err := recvUpload(stream.Recv, releaseChunk)
	if err != nil {
		return fault.Status(err)
	}
	var want narstore.Expect
	if h := hdr.GetExpectedFileHash(); h != "" {
		if want.FileHash, err = nixhash.ParseAs(nixhash.SHA256, h); err != nil {
			return fault.Status(fault.Invalid("expected_file_hash: %v", err))
		}
	}
	want.Compression = hdr.GetExpectedCompression()

	var nf *indexv1.NarFile
	if id := hdr.GetSpoolId(); id != "" {
		nf, err = s.ingestSpooled(ctx, id, chunks, want)
	} else {
		nf, err = s.nars.Ingest(ctx, chunks, want)
	}
	if err != nil {
		if errors.Is(err, fault.ErrInvalid) {
			s.log.WarnContext(ctx, "refused NAR upload", "err", err)
		}
		return fault.Status(err)
	}
	fileHash, _ := nixhash.Parse(nf.GetFileHash())
	stored, err := s.catalog.AddStoredNarFile(fileHash.NixBase32(), nf, func() error {
		_, err := s.nars.Stat(ctx, nf)
		return err
	})
	if err != nil {
		return fault.Status(err)
	}
	s.log.InfoContext(ctx, "stored NAR file", "file_hash", stored.GetFileHash(), "file_size", stored.GetFileSize(),
		"compression", stored.GetCompression(), "nar_hash", stored.GetNarHash(), "nar_size", stored.GetNarSize())
	return stream.SendAndClose(&indexv1.PutNarResponse{File: stored})
}

// Spool holds the files a co-located gateway wrote uploads into
// (package spool).
type Spool interface {
	// Claim takes the file handed out under id; false: no such file.
	Claim(ctx context.Context, id string) (*os.File, bool)
}

// WithSpool has PutNar take uploads spooled into sp's files.
func (s *Server) WithSpool(sp Spool) *Server {
	s.spool = sp
	return s
}

// ingestSpooled verifies and stores the spooled upload id once the
// gateway has written the file and ended the call; no chunks may follow
// the header.
func (s *Server) ingestSpooled(ctx context.Context, id string, chunks io.Reader, want narstore.Expect) (*indexv1.NarFile, error) {
	if s.spool == nil {
		return nil, fault.Invalid("spool_id %q: this index hands out no spool files (-upload-spool)", id)
	}
	f, ok := s.spool.Claim(ctx, id)
	if !ok {
		// Retryable: the index may have restarted since it handed the
		// file out (its tmp/ is emptied at start), or the caller left.
		return nil, fault.Unavailable("spool_id %q: no such spooled upload (claimed already, its connection ended, or the index restarted): upload again", id)
	}
	var b [1]byte
	if n, err := chunks.Read(b[:]); n > 0 || err != io.EOF {
		narstore.Discard(f)
		if err != nil && err != io.EOF {
			return nil, err
		}
		return nil, fault.Invalid("spool_id %q: a spooled upload takes no chunks", id)
	}
	return s.nars.IngestSpooled(ctx, f, want)
}

// uploadMessage is a message of a client stream (PutNar, PutArtifact):
// a header first, then data chunks.
type uploadMessage[H comparable] interface {
	GetHeader() H
	GetChunk() []byte
}

// recvUpload receives an upload's first message, which must be its
// header, and returns the header and a reader of the data chunks that
// follow; release, unless nil, takes back each chunk once it is read.
func recvUpload[M uploadMessage[H], H comparable](recv func() (M, error), release func([]byte)) (H, *chunkReader[M, H], error) {
	var none H
	first, err := recv()
	if err == io.EOF {
		return none, nil, fault.Invalid("empty request: the first message must be a header")
	}
	if err != nil {
		return none, nil, err
	}
	hdr := first.GetHeader()
	if hdr == none {
		return none, nil, fault.Invalid("the first message must be a header, not data")
	}
	return hdr, &chunkReader[M, H]{recv: recv, release: release}, nil
}

// chunkReader reads the data chunks that follow an upload's header.
type chunkReader[M uploadMessage[H], H comparable] struct {
	recv func() (M, error)
	// release, unless nil, takes back each chunk once it is read.
	release func([]byte)
	chunk   []byte // the chunk being read
	buf     []byte // what is left of it
}

// next receives the next chunk, releasing the one read.
func (r *chunkReader[M, H]) next() error {
	var none H
	if r.release != nil && r.chunk != nil {
		r.release(r.chunk)
	}
	r.chunk, r.buf = nil, nil
	msg, err := r.recv()
	if err != nil {
		return err // io.EOF at the end
	}
	if msg.GetHeader() != none {
		return fault.Invalid("a second header after the first message")
	}
	r.chunk = msg.GetChunk()
	r.buf = r.chunk
	return nil
}

func (r *chunkReader[M, H]) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		if err := r.next(); err != nil {
			return 0, err
		}
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

// WriteTo writes the data chunks, as they arrive, to w without copying
// them first (io.Copy and narstore.Ingest use it); it returns w's error as
// is and stops at the first.
func (r *chunkReader[M, H]) WriteTo(w io.Writer) (int64, error) {
	var n int64
	for {
		if len(r.buf) > 0 {
			m, err := w.Write(r.buf)
			n += int64(m)
			r.buf = r.buf[m:]
			if err != nil {
				return n, err
			}
			continue
		}
		err := r.next()
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

// WithPresign lets StatNar hand out presigned URLs of the files, valid for
// expiry, when the NAR store's backend can make them (a bucket).
func (s *Server) WithPresign(expiry time.Duration) *Server {
	s.presignExpiry = expiry
	return s
}

// StatNar describes a stored NAR file; names it under nars/ for a gateway
// that reads the directory itself, when the files are in a local
// directory; and, when asked and the files are in a bucket, presigns a URL
// of it. Only files recorded as stored are found: a quarantined file's
// record has moved out of the catalogue's NAR files, so it gets neither an
// answer nor a name.
func (s *Server) StatNar(ctx context.Context, req *indexv1.StatNarRequest) (*indexv1.StatNarResponse, error) {
	nf, err := s.narFile(req.GetFileHash())
	if errors.Is(err, fault.ErrNotFound) && s.copies != nil {
		return s.statHostCopy(req)
	}
	if err != nil {
		return nil, fault.Status(err)
	}
	resp := &indexv1.StatNarResponse{File: nf}
	rel, local, err := s.nars.RelativePath(nf)
	if err != nil {
		return nil, fault.Status(err)
	}
	if local {
		resp.RelativePath = rel
	}
	if req.GetPresign() && s.presignExpiry > 0 {
		expires := time.Now().Add(s.presignExpiry)
		url, ok, err := s.nars.Presign(ctx, nf, s.presignExpiry)
		if err != nil {
			return nil, fault.Status(err)
		}
		if ok {
			resp.Url, resp.UrlExpires = url, timestamppb.New(expires)
		}
	}
	return resp, nil
}

// statHostCopy is StatNar's answer for a compressed copy of a host path's
// NAR: always in the local nars/host/ directory, never presigned; a
// retired copy has no file there (GetNar makes it again).
func (s *Server) statHostCopy(req *indexv1.StatNarRequest) (*indexv1.StatNarResponse, error) {
	hn, err := s.hostCopy(req.GetFileHash())
	if err != nil {
		return nil, fault.Status(err)
	}
	if hn.Retired {
		return &indexv1.StatNarResponse{File: hn.File}, nil
	}
	rel, err := s.copies.RelativePath(hn.File)
	if err != nil {
		return nil, fault.Status(err)
	}
	if req.GetDownload() || req.GetPresign() {
		s.copies.Used(req.GetFileHash())
	}
	return &indexv1.StatNarResponse{File: hn.File, RelativePath: rel}, nil
}

// hostCopy looks a compressed copy up by file hash.
func (s *Server) hostCopy(fileHash string) (catalog.HostNar, error) {
	h, err := nixhash.ParseAs(nixhash.SHA256, fileHash)
	if err != nil {
		return catalog.HostNar{}, fault.Invalid("file_hash: %v", err)
	}
	return s.catalog.HostNarByFile(h.NixBase32())
}

// RecordDownloads counts downloads that a co-located gateway served
// itself: files from nars/, NARs dumped from the host's store. The files
// and paths need not exist any more (they may have been collected since):
// their paths' last access is recorded if they do.
func (s *Server) RecordDownloads(ctx context.Context, req *indexv1.RecordDownloadsRequest) (*indexv1.RecordDownloadsResponse, error) {
	for i, d := range req.GetDownloads() {
		switch {
		case d.GetFileHash() != "" && d.GetStoreHash() != "":
			return nil, fault.Status(fault.Invalid("downloads[%d]: file_hash and store_hash are both set", i))
		case d.GetStoreHash() != "":
			if err := storepath.ValidateHashPart(d.GetStoreHash()); err != nil {
				return nil, fault.Status(fault.Invalid("downloads[%d].store_hash: %v", i, err))
			}
		default:
			if _, err := nixhash.ParseAs(nixhash.SHA256, d.GetFileHash()); err != nil {
				return nil, fault.Status(fault.Invalid("downloads[%d].file_hash: %v", i, err))
			}
		}
	}
	if s.downloads != nil {
		s.downloads.RecordDownloads(req.GetDownloads())
	}
	if s.copies != nil {
		for _, d := range req.GetDownloads() {
			switch {
			case d.GetStoreHash() != "" && d.GetCount() > 0:
				s.copies.Requested(d.GetStoreHash())
			case d.GetFileHash() != "":
				s.copies.Used(d.GetFileHash())
			}
		}
	}
	return &indexv1.RecordDownloadsResponse{}, nil
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

// GetNar streams a stored file, or a published path's NAR uncompressed:
// decompressed from its file, or dumped from the host's store.
func (s *Server) GetNar(req *indexv1.GetNarRequest, stream indexv1.IndexService_GetNarServer) error {
	ctx := stream.Context()
	rg, err := s.openNar(ctx, req)
	if err != nil {
		return fault.Status(err)
	}
	defer rg.Close()
	err = stream.Send(&indexv1.GetNarResponse{Msg: &indexv1.GetNarResponse_Header{Header: &indexv1.GetNarHeader{
		TotalSize:   rg.Total,
		Compression: rg.Compression,
	}}})
	if err != nil {
		return err
	}
	bufp := chunkPool.Get().(*[]byte)
	defer chunkPool.Put(bufp)
	for left := rg.Length; left > 0; {
		buf := (*bufp)[:min(left, grpcutil.ChunkSize)]
		n, err := readChunk(rg, buf)
		if err != nil {
			return fault.Status(err)
		}
		left -= uint64(n)
		if err := stream.Send(&indexv1.GetNarResponse{Msg: &indexv1.GetNarResponse_Chunk{Chunk: buf}}); err != nil {
			return err
		}
	}
	return nil
}

// readChunk fills buf from r as io.ReadFull does, but also returns the
// error r reports together with the bytes that fill buf, which
// io.ReadFull drops: a Range reports its end check (a NAR longer than its
// record, a copy made again that does not hash right) on the read that
// returns its last bytes, and those bytes must then not be sent: the
// client never gets an unverified file whole.
func readChunk(r io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		switch {
		case err == io.EOF && n == len(buf):
			return n, nil
		case err == io.EOF:
			return n, io.ErrUnexpectedEOF
		case err != nil:
			return n, err
		}
	}
	return n, nil
}

// chunkPool holds the buffers GetNar reads chunks into, so that a NAR
// stream allocates nothing in proportion to its size. A buffer is reused
// as soon as Send returns: grpc-go's SendMsg marshals the message into
// buffers of its own before returning and keeps no reference to it (only
// a stats handler or grpc.EnableTracing could; grpcutil.NewServer sets
// neither). Add one, and this needs a fresh buffer per Send again.
var chunkPool = sync.Pool{New: func() any {
	b := make([]byte, grpcutil.ChunkSize)
	return &b
}}

// openNar opens the byte range req asks for.
func (s *Server) openNar(ctx context.Context, req *indexv1.GetNarRequest) (*narstore.Range, error) {
	var wantHash *nixhash.Hash
	if want := req.GetExpectedNarHash(); want != "" {
		h, err := nixhash.Parse(want)
		if err != nil {
			return nil, fault.Invalid("expected_nar_hash: %v", err)
		}
		wantHash = &h
	}
	checkHash := func(narHash string) error {
		if wantHash != nil && wantHash.String() != narHash {
			return fault.NotFound("the NAR has hash %s, not %s", narHash, wantHash)
		}
		return nil
	}
	switch sel := req.GetSelector().(type) {
	case *indexv1.GetNarRequest_FileHash:
		nf, err := s.narFile(sel.FileHash)
		if errors.Is(err, fault.ErrNotFound) && s.copies != nil {
			hn, herr := s.hostCopy(sel.FileHash)
			if herr != nil {
				return nil, herr
			}
			if err := checkHash(hn.File.GetNarHash()); err != nil {
				return nil, err
			}
			if hn.Retired {
				// A client holds a narinfo from before the eviction.
				if req.GetOffset() == 0 {
					s.copies.Requested(hn.HashPart)
				}
				return s.copies.OpenRetired(ctx, hn, req.GetOffset(), req.GetLength())
			}
			s.copies.Used(sel.FileHash)
			return s.copies.Open(ctx, hn.File, req.GetOffset(), req.GetLength())
		}
		if err != nil {
			return nil, err
		}
		if err := checkHash(nf.GetNarHash()); err != nil {
			return nil, err
		}
		return s.nars.Open(ctx, nf, false, req.GetOffset(), req.GetLength())
	case *indexv1.GetNarRequest_StoreHash:
		info, err := s.pathForNar(ctx, sel.StoreHash)
		if err != nil {
			return nil, err
		}
		if err := checkHash(info.GetNarHash()); err != nil {
			return nil, err
		}
		if nf := info.GetFile(); nf != nil && !info.GetHostStore() {
			if req.GetOffset() > 0 && nf.GetCompression() != compression.None {
				// A compressed stream has no index: serving from an offset
				// would cost decompressing everything before it, for a
				// few bytes asked anonymously.
				return nil, fault.OutOfRange("a byte range from offset %d of the uncompressed NAR of %s is not served: its file is %s compressed, and reaching the offset costs decompressing everything before it; fetch the narinfo's URL (%s), which takes ranges",
					req.GetOffset(), info.GetStorePath(), nf.GetCompression(), info.GetUrl())
			}
			return s.nars.Open(ctx, nf, true, req.GetOffset(), req.GetLength())
		}
		if s.copies != nil && req.GetOffset() == 0 {
			s.copies.Requested(sel.StoreHash)
		}
		return s.local.OpenNar(ctx, info, req.GetOffset(), req.GetLength())
	default:
		return nil, fault.Invalid("no selector: set file_hash or store_hash")
	}
}

// pathForNar is the published path with this hash part, pushed (with a
// file) or else local.
func (s *Server) pathForNar(ctx context.Context, hashPart string) (*indexv1.PathInfo, error) {
	if err := storepath.ValidateHashPart(hashPart); err != nil {
		return nil, fault.Invalid("store_hash: %v", err)
	}
	info, err := s.catalog.PathInfo(hashPart)
	if errors.Is(err, fault.ErrNotFound) && s.local != nil {
		return s.local.Find(ctx, hashPart)
	}
	if err != nil {
		return nil, err
	}
	if info.GetFile() == nil {
		return nil, fault.NotFound("store path %s has no NAR file", info.GetStorePath())
	}
	return info, nil
}

// PutPathInfo verifies, signs and publishes a store path.
func (s *Server) PutPathInfo(ctx context.Context, req *indexv1.PutPathInfoRequest) (*indexv1.PutPathInfoResponse, error) {
	// A token limited to some names (its push pattern) is held to them
	// here too, not only by the gateway: a gateway taken over forwards
	// whatever it is given.
	if id, ok := auth.IdentityFrom(ctx); ok {
		base := req.GetInfo().GetStorePath()
		base = base[strings.LastIndexByte(base, '/')+1:]
		if sp, err := storepath.ParseBase(base); err == nil && !id.MayPublish(sp.Name) {
			return nil, status.Errorf(codes.PermissionDenied, "token %q may only publish store paths named %q, not %s",
				id.Name, id.PushPattern, sp.Name)
		}
	}
	info, err := s.publisher.Publish(ctx, req.GetInfo())
	if err != nil {
		s.log.WarnContext(ctx, "refused to publish", "store_path", req.GetInfo().GetStorePath(), "err", err)
		return nil, fault.Status(err)
	}
	s.log.InfoContext(ctx, "published path", "store_path", info.GetStorePath(), "nar_hash", info.GetNarHash(),
		"signatures", len(info.GetSignatures()))
	return &indexv1.PutPathInfoResponse{Info: info}, nil
}

// GetPathInfo looks a published path up.
func (s *Server) GetPathInfo(ctx context.Context, req *indexv1.GetPathInfoRequest) (*indexv1.GetPathInfoResponse, error) {
	if err := storepath.ValidateHashPart(req.GetHashPart()); err != nil {
		return nil, fault.Status(fault.Invalid("hash_part: %v", err))
	}
	info, err := s.catalog.PathInfo(req.GetHashPart())
	if errors.Is(err, fault.ErrNotFound) && s.local != nil {
		info, err = s.local.PathInfo(ctx, req.GetHashPart())
	}
	if errors.Is(err, fault.ErrNotFound) && s.upstream != nil {
		info, err = s.upstream.PathInfo(ctx, req.GetHashPart())
	}
	if err != nil {
		return nil, fault.Status(err)
	}
	return &indexv1.GetPathInfoResponse{Info: info}, nil
}

// CheckPaths tells which hash parts are published.
func (s *Server) CheckPaths(ctx context.Context, req *indexv1.CheckPathsRequest) (*indexv1.CheckPathsResponse, error) {
	hashes := req.GetHashParts()
	if len(hashes) > MaxCheckPaths {
		return nil, fault.Status(fault.Invalid("%d hash parts: at most %d per call", len(hashes), MaxCheckPaths))
	}
	for i, h := range hashes {
		if err := storepath.ValidateHashPart(h); err != nil {
			return nil, fault.Status(fault.Invalid("hash_parts[%d]: %v", i, err))
		}
	}
	present, err := s.catalog.PresentPaths(hashes)
	if err != nil {
		return nil, fault.Status(err)
	}
	if s.local != nil {
		if present, err = s.withLocal(ctx, hashes, present); err != nil {
			return nil, fault.Status(err)
		}
	}
	return &indexv1.CheckPathsResponse{Present: present}, nil
}

// withLocal adds to pushed, the published hash parts of hashes, those
// that are local paths, keeping the order of hashes.
func (s *Server) withLocal(ctx context.Context, hashes, pushed []string) ([]string, error) {
	isPushed := make(map[string]bool, len(pushed))
	for _, h := range pushed {
		isPushed[h] = true
	}
	var rest []string
	for _, h := range hashes {
		if !isPushed[h] {
			rest = append(rest, h)
		}
	}
	local, err := s.local.Present(ctx, rest)
	if err != nil || len(local) == 0 {
		return pushed, err
	}
	isLocal := make(map[string]bool, len(local))
	for _, h := range local {
		isLocal[h] = true
	}
	present := make([]string, 0, len(pushed)+len(local))
	for _, h := range hashes {
		if isPushed[h] || isLocal[h] {
			present = append(present, h)
			delete(isPushed, h)
			delete(isLocal, h)
		}
	}
	return present, nil
}

// DefaultMaxUploads is the default -max-concurrent-uploads.
const DefaultMaxUploads = 16
