package admin

import (
	"context"

	"github.com/nixcache/nixcache/platform/auth"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/fault"
	"github.com/nixcache/nixcache/services/index/internal/tokens"
)

// WithTokens has the token methods manage t.
func (s *Service) WithTokens(t *tokens.Store) *Service {
	s.tokens = t
	return s
}

// caller is the name of the token of the call, for created_by.
func caller(ctx context.Context) string {
	id, _ := auth.IdentityFrom(ctx)
	return id.Name
}

func (s *Service) tokenStore() (*tokens.Store, error) {
	if s.tokens == nil {
		return nil, fault.Status(fault.Precondition("this index keeps no tokens"))
	}
	return s.tokens, nil
}

// CreateToken makes a token and returns its secret, once.
func (s *Service) CreateToken(ctx context.Context, req *indexv1.CreateTokenRequest) (*indexv1.CreateTokenResponse, error) {
	t, err := s.tokenStore()
	if err != nil {
		return nil, err
	}
	tok, secret, err := t.Create(req, caller(ctx))
	if err != nil {
		return nil, fault.Status(err)
	}
	return &indexv1.CreateTokenResponse{Token: tok, Secret: secret}, nil
}

// ListTokens lists the tokens, file and catalogue.
func (s *Service) ListTokens(context.Context, *indexv1.ListTokensRequest) (*indexv1.ListTokensResponse, error) {
	t, err := s.tokenStore()
	if err != nil {
		return nil, err
	}
	toks, err := t.List()
	if err != nil {
		return nil, fault.Status(err)
	}
	return &indexv1.ListTokensResponse{Tokens: toks}, nil
}

// RevokeToken deletes a catalogue token.
func (s *Service) RevokeToken(ctx context.Context, req *indexv1.RevokeTokenRequest) (*indexv1.RevokeTokenResponse, error) {
	t, err := s.tokenStore()
	if err != nil {
		return nil, err
	}
	if req.GetName() == "" {
		return nil, fault.Status(fault.Invalid("name is empty"))
	}
	tok, err := t.Revoke(req.GetName(), caller(ctx))
	if err != nil {
		return nil, fault.Status(err)
	}
	return &indexv1.RevokeTokenResponse{Token: tok}, nil
}
