// Package signer implements nixcache.signer.v1.SignerService: it holds the
// cache's secret keys and signs path fingerprints with every one of them.
package signer

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nixcache/nixcache/nix/signature"
	"github.com/nixcache/nixcache/nix/storepath"
	signerv1 "github.com/nixcache/nixcache/proto/nixcache/signer/v1"
)

// ctxCheckInterval is how many signatures Sign makes between looks at
// whether the call was cancelled.
const ctxCheckInterval = 256

// Signer is the SignerService. Its keys never leave it: callers send
// fingerprints and get signatures back.
type Signer struct {
	signerv1.UnimplementedSignerServiceServer

	keys     []signature.SecretKey // keys[0] is the primary
	storeDir string
	maxBatch int
}

// NewService returns a Signer signing with every one of keys (the first is
// the primary), accepting fingerprints of store paths in storeDir, at most
// maxBatch per call.
func NewService(keys []signature.SecretKey, storeDir string, maxBatch int) (*Signer, error) {
	if len(keys) == 0 {
		return nil, errors.New("signer: no keys")
	}
	seen := make(map[string]bool, len(keys))
	for i, k := range keys {
		if len(k.Public().Key) == 0 {
			return nil, fmt.Errorf("signer: key %d (%q) holds no key", i, k.Name)
		}
		if seen[k.Name] {
			return nil, fmt.Errorf("signer: two keys named %q", k.Name)
		}
		seen[k.Name] = true
	}
	if err := storepath.ValidateStoreDir(storeDir); err != nil {
		return nil, fmt.Errorf("signer: %w", err)
	}
	if maxBatch < 1 {
		return nil, fmt.Errorf("signer: max batch %d, want at least 1", maxBatch)
	}
	return &Signer{keys: keys, storeDir: storeDir, maxBatch: maxBatch}, nil
}

// Sign validates every fingerprint, then signs each with every key.
func (s *Signer) Sign(ctx context.Context, req *signerv1.SignRequest) (*signerv1.SignResponse, error) {
	sigs, err := s.sign(ctx, req.GetFingerprints())
	if err != nil {
		return nil, toStatus(err)
	}
	results := make([]*signerv1.FingerprintSignatures, len(sigs))
	for i, ss := range sigs {
		results[i] = &signerv1.FingerprintSignatures{Signatures: ss}
	}
	return &signerv1.SignResponse{Results: results}, nil
}

// ListKeys lists the public halves of the keys, primary first.
func (s *Signer) ListKeys(context.Context, *signerv1.ListKeysRequest) (*signerv1.ListKeysResponse, error) {
	keys := make([]*signerv1.PublicKey, len(s.keys))
	for i, k := range s.keys {
		keys[i] = &signerv1.PublicKey{Name: k.Name, PublicKey: k.Public().String(), Active: true}
	}
	return &signerv1.ListKeysResponse{Keys: keys}, nil
}

// sign returns, for each fingerprint in order, its signatures by every key
// in order. It signs nothing unless every fingerprint is valid.
func (s *Signer) sign(ctx context.Context, fingerprints []string) ([][]string, error) {
	switch n := len(fingerprints); {
	case n == 0:
		return nil, invalidArgument("no fingerprints to sign")
	case n > s.maxBatch:
		return nil, invalidArgument(fmt.Sprintf("%d fingerprints in one call, more than the limit of %d", n, s.maxBatch))
	}
	for i, fp := range fingerprints {
		if _, err := signature.ParseFingerprint(s.storeDir, fp); err != nil {
			return nil, invalidArgument(fmt.Sprintf("fingerprints[%d]: %v", i, err))
		}
	}
	out := make([][]string, len(fingerprints))
	for i, fp := range fingerprints {
		if i%ctxCheckInterval == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
		sigs := make([]string, len(s.keys))
		for j, k := range s.keys {
			sigs[j] = k.Sign(fp)
		}
		out[i] = sigs
	}
	return out, nil
}

// invalidArgumentError is a client's mistake.
type invalidArgumentError struct{ msg string }

func (e *invalidArgumentError) Error() string { return e.msg }

func invalidArgument(msg string) error { return &invalidArgumentError{msg: msg} }

// toStatus maps the errors of this package to gRPC status codes; it is the
// only place that does.
func toStatus(err error) error {
	var invalid *invalidArgumentError
	switch {
	case errors.As(err, &invalid):
		return status.Error(codes.InvalidArgument, invalid.msg)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	default:
		return status.Error(codes.Internal, "internal error")
	}
}
