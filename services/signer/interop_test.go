package main

// These tests hold nixcache's keys and signatures against the real Nix.
// They need nix and nix-store in PATH and fail without them.

import (
	"bytes"
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

// TestKeygenPairWorksInNix: Nix signs with a secret key made by
// "nixcache-signer keygen" and trusts the signature by its public key.
func TestKeygenPairWorksInNix(t *testing.T) {
	nix := nixtest.NewCache(t)
	dir := t.TempDir()
	sec, pub := filepath.Join(dir, "secret"), filepath.Join(dir, "public")
	var stderr bytes.Buffer
	if code := run([]string{"keygen", "interop-1", sec, pub}, &stderr); code != 0 {
		t.Fatalf("keygen exit %d: %s", code, &stderr)
	}
	pubText, err := os.ReadFile(pub)
	if err != nil {
		t.Fatal(err)
	}

	p := nix.AddPath("signed by nix with a nixcache key\n", sec)
	sigs := nix.Sigs(p)
	if len(sigs) != 1 || !strings.HasPrefix(sigs[0], "interop-1:") {
		t.Fatalf("narinfo signatures %q, want one by interop-1", sigs)
	}
	if err := nix.Verify(p, string(pubText)); err != nil {
		t.Errorf("nix does not trust the path with our public key: %v", err)
	}
	// Control: another key of the same name is not trusted.
	_, otherPub := nix.GenerateKey("interop-1")
	otherText, err := os.ReadFile(otherPub)
	if err != nil {
		t.Fatal(err)
	}
	if err := nix.Verify(p, string(otherText)); err == nil {
		t.Error("nix trusts the path with an unrelated public key; the check proves nothing")
	}
}

// TestNixKeySignsInSigner: a key pair made by nix-store
// --generate-binary-cache-key loads into the signer, whose signatures Nix
// trusts with that pair's public key.
func TestNixKeySignsInSigner(t *testing.T) {
	nix := nixtest.NewCache(t)
	sec, pub := nix.GenerateKey("nixgen-1")
	pubText, err := os.ReadFile(pub)
	if err != nil {
		t.Fatal(err)
	}

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- app.Run(ctx, app.Options{KeyFiles: []string{sec}, StoreDir: nixtest.StoreDir, MaxBatch: 10, ShutdownGrace: time.Second}, lis)
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

	keys, err := client.ListKeys(t.Context(), &signerv1.ListKeysRequest{}, grpc.WaitForReady(true))
	if err != nil {
		t.Fatal(err)
	}
	if len(keys.Keys) != 1 || keys.Keys[0].PublicKey != string(pubText) {
		t.Errorf("ListKeys = %v, want the public key nix wrote: %s", keys.Keys, pubText)
	}

	paths := []nixtest.Path{nix.AddPath("first\n", ""), nix.AddPath("second\n", "")}
	var fps []string
	for _, p := range paths {
		if err := nix.Verify(p, string(pubText)); err == nil {
			t.Fatalf("nix trusts unsigned %s; the check proves nothing", p.StorePath)
		}
		fps = append(fps, p.Fingerprint)
	}
	resp, err := client.Sign(t.Context(), &signerv1.SignRequest{Fingerprints: fps})
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range paths {
		nix.AddSig(p, resp.Results[i].Signatures[0])
		if err := nix.Verify(p, string(pubText)); err != nil {
			t.Errorf("nix does not trust %s signed by the signer: %v", p.StorePath, err)
		}
	}
}
