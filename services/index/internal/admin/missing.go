package admin

import (
	"context"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/fault"
	"github.com/nixcache/nixcache/services/index/internal/server"
)

// PathChecker tells which hash parts are published: the IndexService's
// CheckPaths, which also knows the host's store and its bounds.
type PathChecker interface {
	CheckPaths(context.Context, *indexv1.CheckPathsRequest) (*indexv1.CheckPathsResponse, error)
}

// WithPathChecker makes FindMissingPaths answer from c.
func (s *Service) WithPathChecker(c PathChecker) *Service {
	s.paths = c
	return s
}

// FindMissingPaths tells which of the paths asked about are not served.
func (s *Service) FindMissingPaths(ctx context.Context, req *indexv1.FindMissingPathsRequest) (*indexv1.FindMissingPathsResponse, error) {
	if s.paths == nil {
		return nil, status.Error(codes.Unimplemented, "FindMissingPaths is not wired to the catalogue")
	}
	paths := req.GetPaths()
	if len(paths) > server.MaxCheckPaths {
		return nil, fault.Status(fault.Invalid("%d paths: at most %d per call", len(paths), server.MaxCheckPaths))
	}
	hashes := make([]string, len(paths))
	for i, p := range paths {
		h, err := s.hashPartOf(fmt.Sprintf("paths[%d]", i), p)
		if err != nil {
			return nil, fault.Status(err)
		}
		hashes[i] = h
	}
	resp, err := s.paths.CheckPaths(ctx, &indexv1.CheckPathsRequest{HashParts: hashes})
	if err != nil {
		return nil, err // already a status
	}
	present := make(map[string]bool, len(resp.GetPresent()))
	for _, h := range resp.GetPresent() {
		present[h] = true
	}
	missing := []string{}
	for i, p := range paths {
		if !present[hashes[i]] {
			missing = append(missing, p)
		}
	}
	return &indexv1.FindMissingPathsResponse{Missing: missing}, nil
}
