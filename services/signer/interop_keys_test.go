package main

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/nixcache/nixcache/nix/nixtest"
	signerv1 "github.com/nixcache/nixcache/proto/nixcache/signer/v1"
	"github.com/nixcache/nixcache/services/signer/internal/app"
)

// TestGeneratedKeyWorksInNix: a key made with GenerateKey signs paths that
// Nix trusts with the public key GenerateKey answered (and wrote beside
// the secret); after RetireKey, the old key no longer signs.
func TestGeneratedKeyWorksInNix(t *testing.T) {
	nix := nixtest.NewCache(t)
	oldSec, _ := nix.GenerateKey("rotate-1")
	keyDir := filepath.Join(t.TempDir(), "keys")

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- app.Run(ctx, app.Options{KeyFiles: []string{oldSec}, KeyDir: keyDir, StoreDir: nixtest.StoreDir, MaxBatch: 10, ShutdownGrace: time.Second}, lis)
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	client := signerv1.NewSignerServiceClient(cc)

	gen, err := client.GenerateKey(t.Context(), &signerv1.GenerateKeyRequest{Name: "rotate-2"}, grpc.WaitForReady(true))
	if err != nil {
		t.Fatal(err)
	}
	newPub := gen.Key.PublicKey
	pubFile, err := os.ReadFile(filepath.Join(keyDir, "rotate-2.key.pub"))
	if err != nil || string(pubFile) != newPub {
		t.Errorf("rotate-2.key.pub = %q (%v), GenerateKey answered %q", pubFile, err, newPub)
	}
	if _, err := client.RetireKey(t.Context(), &signerv1.RetireKeyRequest{Name: "rotate-1"}); err != nil {
		t.Fatal(err)
	}

	p := nix.AddPath("signed by a generated key\n", "")
	if err := nix.Verify(p, newPub); err == nil {
		t.Fatalf("nix trusts unsigned %s; the check proves nothing", p.StorePath)
	}
	resp, err := client.Sign(t.Context(), &signerv1.SignRequest{Fingerprints: []string{p.Fingerprint}})
	if err != nil {
		t.Fatal(err)
	}
	sigs := resp.Results[0].Signatures
	if len(sigs) != 1 || !strings.HasPrefix(sigs[0], "rotate-2:") {
		t.Fatalf("signatures %q, want one by rotate-2 only (rotate-1 is retired)", sigs)
	}
	nix.AddSig(p, sigs[0])
	if err := nix.Verify(p, newPub); err != nil {
		t.Errorf("nix does not trust %s signed by the generated key: %v", p.StorePath, err)
	}
}
