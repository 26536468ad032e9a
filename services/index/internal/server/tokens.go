package server

import (
	"context"
	"crypto/sha256"

	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/catalog"
	"github.com/nixcache/nixcache/services/index/internal/fault"
)

// TokenChecker says which token a secret's digest is (package tokens).
type TokenChecker interface {
	// Check returns the token valid now whose secret has digest, and
	// counts it as used; or nil and why not.
	Check(digest catalog.TokenDigest) (tok *indexv1.Token, reason string, err error)
}

// WithTokens has AuthenticateToken answer from t.
func (s *Server) WithTokens(t TokenChecker) *Server {
	s.tokens = t
	return s
}

// AuthenticateToken says whether a secret's digest is a valid token.
func (s *Server) AuthenticateToken(_ context.Context, req *indexv1.AuthenticateTokenRequest) (*indexv1.AuthenticateTokenResponse, error) {
	var digest catalog.TokenDigest
	if len(req.GetSecretSha256()) != sha256.Size {
		return nil, fault.Status(fault.Invalid("secret_sha256: %d bytes, want %d", len(req.GetSecretSha256()), sha256.Size))
	}
	if s.tokens == nil {
		return &indexv1.AuthenticateTokenResponse{Reason: "the index has no tokens"}, nil
	}
	copy(digest[:], req.GetSecretSha256())
	tok, reason, err := s.tokens.Check(digest)
	if err != nil {
		return nil, fault.Status(err)
	}
	if tok == nil {
		return &indexv1.AuthenticateTokenResponse{Reason: reason}, nil
	}
	return &indexv1.AuthenticateTokenResponse{Valid: true, Token: tok}, nil
}
