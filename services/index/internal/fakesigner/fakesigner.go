// Package fakesigner is a SignerService for the index's tests: it signs
// with keys made by signature.Generate, validating fingerprints strictly as
// the real signer does, and can be told to hang.
package fakesigner

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nixcache/nixcache/nix/signature"
	signerv1 "github.com/nixcache/nixcache/proto/nixcache/signer/v1"
)

// Signer signs with Active and lists Active and Inactive.
type Signer struct {
	signerv1.UnimplementedSignerServiceServer

	StoreDir string
	Active   signature.SecretKey
	Inactive signature.SecretKey
	// Hang, when set, makes Sign wait until its caller gives up.
	Hang atomic.Bool
	// Calls counts Sign calls.
	Calls atomic.Int64

	// mu guards the keys GenerateKey added and those RetireKey retired.
	mu      sync.Mutex
	added   []signature.SecretKey
	retired map[string]bool
}

// New returns a Signer with fresh keys test-cache-1 (active) and
// test-cache-old (inactive).
func New(t testing.TB, storeDir string) *Signer {
	t.Helper()
	active, err := signature.Generate("test-cache-1")
	if err != nil {
		t.Fatal(err)
	}
	inactive, err := signature.Generate("test-cache-old")
	if err != nil {
		t.Fatal(err)
	}
	return &Signer{StoreDir: storeDir, Active: active, Inactive: inactive}
}

// Serve serves s on lis until the test ends.
func (s *Signer) Serve(t testing.TB, lis net.Listener) {
	srv := grpc.NewServer()
	signerv1.RegisterSignerServiceServer(srv, s)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
}

// Sign implements SignerService.
func (s *Signer) Sign(ctx context.Context, req *signerv1.SignRequest) (*signerv1.SignResponse, error) {
	s.Calls.Add(1)
	if s.Hang.Load() {
		<-ctx.Done()
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	resp := &signerv1.SignResponse{}
	for _, fp := range req.GetFingerprints() {
		if _, err := signature.ParseFingerprint(s.StoreDir, fp); err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		var sigs []string
		for _, k := range s.activeKeys() {
			sigs = append(sigs, k.Sign(fp))
		}
		resp.Results = append(resp.Results, &signerv1.FingerprintSignatures{Signatures: sigs})
	}
	return resp, nil
}

// activeKeys are Active, unless retired, and the keys added since.
func (s *Signer) activeKeys() []signature.SecretKey {
	s.mu.Lock()
	defer s.mu.Unlock()
	var keys []signature.SecretKey
	for _, k := range append([]signature.SecretKey{s.Active}, s.added...) {
		if !s.retired[k.Name] {
			keys = append(keys, k)
		}
	}
	return keys
}

// Key returns the secret key named name that the signer holds.
func (s *Signer) Key(name string) (signature.SecretKey, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, k := range append([]signature.SecretKey{s.Active, s.Inactive}, s.added...) {
		if k.Name == name {
			return k, true
		}
	}
	return signature.SecretKey{}, false
}

// GenerateKey implements SignerService.
func (s *Signer) GenerateKey(_ context.Context, req *signerv1.GenerateKeyRequest) (*signerv1.GenerateKeyResponse, error) {
	if _, ok := s.Key(req.GetName()); ok {
		return nil, status.Errorf(codes.AlreadyExists, "key %q exists", req.GetName())
	}
	k, err := signature.Generate(req.GetName())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	s.mu.Lock()
	s.added = append(s.added, k)
	s.mu.Unlock()
	return &signerv1.GenerateKeyResponse{Key: &signerv1.PublicKey{Name: k.Name, PublicKey: k.Public().String(), Active: true}}, nil
}

// RetireKey implements SignerService.
func (s *Signer) RetireKey(_ context.Context, req *signerv1.RetireKeyRequest) (*signerv1.RetireKeyResponse, error) {
	k, ok := s.Key(req.GetName())
	if !ok {
		return nil, status.Errorf(codes.NotFound, "no key %q", req.GetName())
	}
	active := s.activeKeys()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(active) == 1 && active[0].Name == k.Name {
		return nil, status.Errorf(codes.FailedPrecondition, "key %q is the last active key", k.Name)
	}
	if s.retired == nil {
		s.retired = map[string]bool{}
	}
	s.retired[k.Name] = true
	return &signerv1.RetireKeyResponse{Key: &signerv1.PublicKey{Name: k.Name, PublicKey: k.Public().String()}}, nil
}

// ListKeys implements SignerService.
func (s *Signer) ListKeys(context.Context, *signerv1.ListKeysRequest) (*signerv1.ListKeysResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	keys := []*signerv1.PublicKey{
		{Name: s.Active.Name, PublicKey: s.Active.Public().String(), Active: !s.retired[s.Active.Name]},
		{Name: s.Inactive.Name, PublicKey: s.Inactive.Public().String()},
	}
	for _, k := range s.added {
		keys = append(keys, &signerv1.PublicKey{Name: k.Name, PublicKey: k.Public().String(), Active: !s.retired[k.Name]})
	}
	return &signerv1.ListKeysResponse{Keys: keys}, nil
}
