// Package fakesigner is a SignerService for the index's tests: it signs
// with keys made by signature.Generate, validating fingerprints strictly as
// the real signer does, and can be told to hang.
package fakesigner

import (
	"context"
	"net"
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
		resp.Results = append(resp.Results, &signerv1.FingerprintSignatures{Signatures: []string{s.Active.Sign(fp)}})
	}
	return resp, nil
}

// ListKeys implements SignerService.
func (s *Signer) ListKeys(context.Context, *signerv1.ListKeysRequest) (*signerv1.ListKeysResponse, error) {
	return &signerv1.ListKeysResponse{Keys: []*signerv1.PublicKey{
		{Name: s.Active.Name, PublicKey: s.Active.Public().String(), Active: true},
		{Name: s.Inactive.Name, PublicKey: s.Inactive.Public().String()},
	}}, nil
}
