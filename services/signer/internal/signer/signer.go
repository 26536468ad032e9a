// Package signer implements nixcache.signer.v1.SignerService: it holds the
// cache's secret keys (a keyring.Ring), signs path fingerprints with every
// active one, and generates and retires keys.
package signer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"unicode"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nixcache/nixcache/nix/signature"
	"github.com/nixcache/nixcache/nix/storepath"
	"github.com/nixcache/nixcache/platform/grpcutil"
	"github.com/nixcache/nixcache/platform/metrics"
	signerv1 "github.com/nixcache/nixcache/proto/nixcache/signer/v1"
	"github.com/nixcache/nixcache/services/signer/internal/keyring"
)

// ctxCheckInterval is how many signatures Sign makes between looks at
// whether the call was cancelled.
const ctxCheckInterval = 256

// Signer is the SignerService. Its keys never leave it: callers send
// fingerprints and get signatures back.
type Signer struct {
	signerv1.UnimplementedSignerServiceServer

	ring     *keyring.Ring
	storeDir string
	maxBatch int
	metrics  *metrics.Signer
	log      *slog.Logger
}

// Config configures New.
type Config struct {
	// Ring holds the keys; it must have an active key.
	Ring *keyring.Ring
	// StoreDir is the store directory fingerprints must name.
	StoreDir string
	// MaxBatch is the most fingerprints one Sign call may carry.
	MaxBatch int
	// Metrics counts signatures; nil counts nothing.
	Metrics *metrics.Signer
	// Log gets the audit trail (every signature made, with the store
	// path, the keys and the caller; every key generated or retired) and
	// the errors behind Internal answers; nil discards them.
	Log *slog.Logger
}

// New returns a Signer signing with every active key of cfg.Ring.
func New(cfg Config) (*Signer, error) {
	if cfg.Ring == nil {
		return nil, errors.New("signer: no key ring")
	}
	if active, _ := cfg.Ring.Counts(); active == 0 {
		return nil, errors.New("signer: no keys: no active key to sign with")
	}
	if err := storepath.ValidateStoreDir(cfg.StoreDir); err != nil {
		return nil, fmt.Errorf("signer: %w", err)
	}
	if cfg.MaxBatch < 1 {
		return nil, fmt.Errorf("signer: max batch %d, want at least 1", cfg.MaxBatch)
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Signer{ring: cfg.Ring, storeDir: cfg.StoreDir, maxBatch: cfg.MaxBatch, metrics: cfg.Metrics, log: log}, nil
}

// Sign validates every fingerprint, then signs each with every active key.
func (s *Signer) Sign(ctx context.Context, req *signerv1.SignRequest) (*signerv1.SignResponse, error) {
	sigs, err := s.sign(ctx, req.GetFingerprints())
	if err != nil {
		return nil, s.toStatus(ctx, err)
	}
	results := make([]*signerv1.FingerprintSignatures, len(sigs))
	for i, ss := range sigs {
		results[i] = &signerv1.FingerprintSignatures{Signatures: ss}
	}
	return &signerv1.SignResponse{Results: results}, nil
}

// ListKeys lists the public halves of the keys, active and retired, in
// the ring's order (the primary key first).
func (s *Signer) ListKeys(context.Context, *signerv1.ListKeysRequest) (*signerv1.ListKeysResponse, error) {
	infos := s.ring.List()
	keys := make([]*signerv1.PublicKey, len(infos))
	for i, k := range infos {
		keys[i] = publicKey(k)
	}
	return &signerv1.ListKeysResponse{Keys: keys}, nil
}

// GenerateKey makes a new active key in the key directory.
func (s *Signer) GenerateKey(ctx context.Context, req *signerv1.GenerateKeyRequest) (*signerv1.GenerateKeyResponse, error) {
	info, err := s.ring.Generate(req.GetName())
	if err != nil {
		return nil, s.toStatus(ctx, err)
	}
	s.log.InfoContext(ctx, "generated a new signing key", "key", info.Public.Name, "public_key", info.Public.String(), "file", info.File, "caller", grpcutil.Caller(ctx))
	return &signerv1.GenerateKeyResponse{Key: publicKey(info)}, nil
}

// RetireKey stops a key from signing, for good.
func (s *Signer) RetireKey(ctx context.Context, req *signerv1.RetireKeyRequest) (*signerv1.RetireKeyResponse, error) {
	name := req.GetName()
	switch {
	case name == "":
		return nil, status.Error(codes.InvalidArgument, "name is empty")
	case !utf8.ValidString(name) || strings.ContainsFunc(name, func(r rune) bool { return r == ':' || unicode.IsSpace(r) || !unicode.IsPrint(r) }):
		return nil, status.Errorf(codes.InvalidArgument, "%q is not a key name", name)
	}
	info, err := s.ring.Retire(name)
	if err != nil {
		return nil, s.toStatus(ctx, err)
	}
	s.log.InfoContext(ctx, "key retired", "key", info.Public.Name, "public_key", info.Public.String(), "caller", grpcutil.Caller(ctx))
	return &signerv1.RetireKeyResponse{Key: publicKey(info)}, nil
}

func publicKey(k keyring.Info) *signerv1.PublicKey {
	return &signerv1.PublicKey{Name: k.Public.Name, PublicKey: k.Public.String(), Active: k.Active}
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
	paths := make([]string, len(fingerprints))
	for i, fp := range fingerprints {
		parsed, err := signature.ParseFingerprint(s.storeDir, fp)
		if err != nil {
			return nil, invalidArgument(fmt.Sprintf("fingerprints[%d]: %v", i, err))
		}
		paths[i] = parsed.StorePath
	}
	keys := s.ring.Active()
	if len(keys) == 0 {
		return nil, errors.New("no active key") // the ring refuses to retire the last one
	}
	out := make([][]string, len(fingerprints))
	for i, fp := range fingerprints {
		if i%ctxCheckInterval == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
		sigs := make([]string, len(keys))
		for j, k := range keys {
			sigs[j] = k.Sign(fp)
		}
		out[i] = sigs
	}
	names := make([]string, len(keys))
	for i, k := range keys {
		names[i] = k.Name
		s.metrics.Signed(k.Name, len(fingerprints))
	}
	// The audit trail: every signature made, and who asked for it.
	caller := grpcutil.Caller(ctx)
	for _, p := range paths {
		s.log.InfoContext(ctx, "signed", "store_path", p, "keys", names, "caller", caller)
	}
	return out, nil
}

// invalidArgumentError is a client's mistake.
type invalidArgumentError struct{ msg string }

func (e *invalidArgumentError) Error() string { return e.msg }

func invalidArgument(msg string) error { return &invalidArgumentError{msg: msg} }

// toStatus maps the errors of this package and of the key ring to gRPC
// status codes; it is the only place that does. Errors behind Internal are
// logged (they hold no secret: key errors name files and keys, never
// their contents).
func (s *Signer) toStatus(ctx context.Context, err error) error {
	var invalid *invalidArgumentError
	switch {
	case errors.As(err, &invalid):
		return status.Error(codes.InvalidArgument, invalid.msg)
	case errors.Is(err, keyring.ErrInvalidName):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, keyring.ErrExists):
		return status.Error(codes.AlreadyExists, err.Error())
	case errors.Is(err, keyring.ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, keyring.ErrLastActive), errors.Is(err, keyring.ErrNoKeyDir):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	default:
		s.log.ErrorContext(ctx, "signer error", "err", err)
		return status.Error(codes.Internal, "internal error")
	}
}
