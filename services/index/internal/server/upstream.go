package server

import (
	"context"

	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
)

// Upstream fetches a path the index lacks from upstream caches (package
// upstream), verifies and publishes it. Its errors are classified as the
// fault package says: ErrNotFound when no upstream has it.
type Upstream interface {
	PathInfo(ctx context.Context, hashPart string) (*indexv1.PathInfo, error)
}

// WithUpstream makes GetPathInfo look up upstream the paths the index
// lacks (pushed or local), and returns s.
func (s *Server) WithUpstream(u Upstream) *Server {
	s.upstream = u
	return s
}
