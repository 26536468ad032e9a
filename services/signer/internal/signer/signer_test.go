package signer

import (
	"context"
	"net"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/nixcache/nixcache/nix/signature"
	signerv1 "github.com/nixcache/nixcache/proto/nixcache/signer/v1"
	"github.com/nixcache/nixcache/services/signer/internal/keyring"
)

const storeDir = "/nix/store"

// Fingerprints of paths as Nix 2.8 printed them.
const (
	fpNoRefs   = "1;/nix/store/1p9q0bz6f22dyxh4lw8xs08p4201vyq4-f;sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw;120;"
	fpWithRefs = "1;/nix/store/7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-hello-2.12;sha256:1i9kxmk8s2k1zpv0fcz6xvn8mxbsqjdpc9yr72ilwi5dbwkn0kqz;226552;" +
		"/nix/store/4nlgxhb09sdr51nc9hdm8az5b08vzkgx-glibc-2.35-163,/nix/store/7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-hello-2.12"
)

func newKeys(t *testing.T, names ...string) []signature.SecretKey {
	t.Helper()
	keys := make([]signature.SecretKey, len(names))
	for i, n := range names {
		k, err := signature.Generate(n)
		if err != nil {
			t.Fatal(err)
		}
		keys[i] = k
	}
	return keys
}

// newService returns a Signer with keys held in memory.
func newService(keys []signature.SecretKey, storeDir string, maxBatch int) (*Signer, error) {
	ring, err := keyring.FromKeys(keys)
	if err != nil {
		return nil, err
	}
	return New(Config{Ring: ring, StoreDir: storeDir, MaxBatch: maxBatch})
}

// serve starts the service on a bufconn and returns a client for it.
func serve(t *testing.T, keys []signature.SecretKey, maxBatch int) signerv1.SignerServiceClient {
	t.Helper()
	svc, err := newService(keys, storeDir, maxBatch)
	if err != nil {
		t.Fatal(err)
	}
	return serveService(t, svc)
}

// serveService serves svc on a bufconn and returns a client for it.
func serveService(t *testing.T, svc *Signer) signerv1.SignerServiceClient {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	signerv1.RegisterSignerServiceServer(srv, svc)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	cc, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return signerv1.NewSignerServiceClient(cc)
}

func TestSignVerifies(t *testing.T) {
	keys := newKeys(t, "cache-1", "cache-2")
	client := serve(t, keys, 10)
	fps := []string{fpWithRefs, fpNoRefs, fpWithRefs}
	resp, err := client.Sign(t.Context(), &signerv1.SignRequest{Fingerprints: fps})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Results) != len(fps) {
		t.Fatalf("%d results, want %d", len(resp.Results), len(fps))
	}
	for i, r := range resp.Results {
		if len(r.Signatures) != len(keys) {
			t.Fatalf("result %d: %d signatures, want %d", i, len(r.Signatures), len(keys))
		}
		for j, sig := range r.Signatures {
			pub := keys[j].Public()
			if !strings.HasPrefix(sig, pub.Name+":") {
				t.Errorf("result %d signature %d = %q, want it by %s (keys in order)", i, j, sig, pub.Name)
			}
			if !pub.Verify(fps[i], sig) {
				t.Errorf("result %d signature %d does not verify with %s", i, j, pub)
			}
			// Results are in request order: no signature fits another fingerprint.
			other := fps[(i+1)%len(fps)]
			if other != fps[i] && pub.Verify(other, sig) {
				t.Errorf("result %d signature %d verifies fingerprint %q too", i, j, other)
			}
		}
	}
}

func TestSignRejects(t *testing.T) {
	client := serve(t, newKeys(t, "cache-1"), 3)
	replace := func(old, new string) string { return strings.Replace(fpWithRefs, old, new, 1) }
	tests := []struct {
		name string
		fps  []string
		want []string // substrings of the status message
	}{
		{name: "empty batch", fps: nil, want: []string{"no fingerprints"}},
		{name: "batch too large", fps: []string{fpNoRefs, fpNoRefs, fpNoRefs, fpNoRefs}, want: []string{"4 fingerprints", "limit of 3"}},
		{name: "empty fingerprint", fps: []string{""}, want: []string{"fingerprints[0]"}},
		{name: "bad version", fps: []string{fpNoRefs, "2" + fpNoRefs[1:]}, want: []string{"fingerprints[1]", "version"}},
		{name: "other store dir", fps: []string{replace("1;/nix/store/", "1;/gnu/store/")}, want: []string{"fingerprints[0]", "store path"}},
		{name: "bad store path hash", fps: []string{replace("7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-hello-2.12;", "7h7qgvs4kgzsn8a6rb273saxyqh4jxle-hello-2.12;")}, want: []string{"fingerprints[0]", "store path"}},
		{name: "bad nar hash", fps: []string{replace("sha256:1i9k", "sha256:ei9k")}, want: []string{"fingerprints[0]", "nar hash"}},
		{name: "sha1 nar hash", fps: []string{replace("sha256:1i9kxmk8s2k1zpv0fcz6xvn8mxbsqjdpc9yr72ilwi5dbwkn0kqz", "sha1:1i9kxmk8s2k1zpv0fcz6xvn8mxbsqjdp")}, want: []string{"nar hash"}},
		{name: "size zero", fps: []string{replace(";226552;", ";0;")}, want: []string{"nar size"}},
		{name: "size leading zero", fps: []string{replace(";226552;", ";0226552;")}, want: []string{"nar size"}},
		{name: "negative size", fps: []string{replace(";226552;", ";-1;")}, want: []string{"nar size"}},
		{name: "unsorted refs", fps: []string{"1;/nix/store/7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-hello-2.12;sha256:1i9kxmk8s2k1zpv0fcz6xvn8mxbsqjdpc9yr72ilwi5dbwkn0kqz;226552;" +
			"/nix/store/7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-hello-2.12,/nix/store/4nlgxhb09sdr51nc9hdm8az5b08vzkgx-glibc-2.35-163"}, want: []string{"sorted"}},
		{name: "duplicate refs", fps: []string{fpNoRefs + "/nix/store/4nlgxhb09sdr51nc9hdm8az5b08vzkgx-glibc-2.35-163,/nix/store/4nlgxhb09sdr51nc9hdm8az5b08vzkgx-glibc-2.35-163"}, want: []string{"sorted"}},
		{name: "base name ref", fps: []string{fpNoRefs + "4nlgxhb09sdr51nc9hdm8az5b08vzkgx-glibc-2.35-163"}, want: []string{"reference"}},
		{name: "trailing newline", fps: []string{fpNoRefs + "\n"}, want: []string{"fingerprints[0]"}},
		{name: "trailing newline after refs", fps: []string{fpWithRefs + "\n"}, want: []string{"fingerprints[0]"}},
		{name: "extra field", fps: []string{fpWithRefs + ";"}, want: []string{"fields"}},
		{name: "missing field", fps: []string{"1;/nix/store/1p9q0bz6f22dyxh4lw8xs08p4201vyq4-f;sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw;120"}, want: []string{"fields"}},
		{name: "last of three invalid", fps: []string{fpNoRefs, fpWithRefs, "1;x"}, want: []string{"fingerprints[2]"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := client.Sign(t.Context(), &signerv1.SignRequest{Fingerprints: tt.fps})
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("Sign = %v, %v; want InvalidArgument", resp, err)
			}
			msg := status.Convert(err).Message()
			for _, want := range tt.want {
				if !strings.Contains(msg, want) {
					t.Errorf("message %q does not contain %q", msg, want)
				}
			}
		})
	}
}

func TestSignBatchLimit(t *testing.T) {
	client := serve(t, newKeys(t, "cache-1"), 5)
	for n := 1; n <= 6; n++ {
		fps := make([]string, n)
		for i := range fps {
			fps[i] = fpNoRefs
		}
		resp, err := client.Sign(t.Context(), &signerv1.SignRequest{Fingerprints: fps})
		switch {
		case n <= 5 && err != nil:
			t.Errorf("batch of %d: %v", n, err)
		case n <= 5 && len(resp.Results) != n:
			t.Errorf("batch of %d: %d results", n, len(resp.Results))
		case n > 5 && status.Code(err) != codes.InvalidArgument:
			t.Errorf("batch of %d: err = %v, want InvalidArgument", n, err)
		}
	}
}

func TestSignCancelled(t *testing.T) {
	svc, err := newService(newKeys(t, "cache-1"), storeDir, 10)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err = svc.Sign(ctx, &signerv1.SignRequest{Fingerprints: []string{fpNoRefs}})
	if status.Code(err) != codes.Canceled {
		t.Errorf("Sign with a cancelled context: %v, want Canceled", err)
	}
}

func TestListKeys(t *testing.T) {
	keys := newKeys(t, "cache-2", "cache-1")
	client := serve(t, keys, 10)
	resp, err := client.ListKeys(t.Context(), &signerv1.ListKeysRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Keys) != len(keys) {
		t.Fatalf("%d keys, want %d", len(resp.Keys), len(keys))
	}
	for i, got := range resp.Keys {
		want := keys[i].Public()
		if got.Name != want.Name || got.PublicKey != want.String() || !got.Active {
			t.Errorf("key %d = %v, want name %q, public key %q, active", i, got, want.Name, want)
		}
		if _, err := signature.ParsePublicKey(got.PublicKey); err != nil {
			t.Errorf("key %d: %v", i, err)
		}
		if strings.Contains(got.String(), keys[i].Encode()[len(keys[i].Name)+1:]) {
			t.Errorf("key %d reveals the secret key", i)
		}
	}
}

func TestNewRejects(t *testing.T) {
	tests := []struct {
		name     string
		keys     []signature.SecretKey
		storeDir string
		maxBatch int
		want     string
	}{
		{name: "no keys", storeDir: storeDir, maxBatch: 1, want: "no keys"},
		{name: "zero key", keys: []signature.SecretKey{{Name: "x"}}, storeDir: storeDir, maxBatch: 1, want: "holds no key"},
		{name: "duplicate names", keys: newKeys(t, "a", "a"), storeDir: storeDir, maxBatch: 1, want: `two keys named "a"`},
		{name: "relative store dir", keys: newKeys(t, "a"), storeDir: "nix/store", maxBatch: 1, want: "store"},
		{name: "zero batch", keys: newKeys(t, "a"), storeDir: storeDir, maxBatch: 0, want: "max batch"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := newService(tt.keys, tt.storeDir, tt.maxBatch)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("NewService error = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestOtherStoreDir(t *testing.T) {
	keys := newKeys(t, "cache-1")
	svc, err := newService(keys, "/gnu/store", 10)
	if err != nil {
		t.Fatal(err)
	}
	fp := strings.ReplaceAll(fpWithRefs, "/nix/store/", "/gnu/store/")
	resp, err := svc.Sign(t.Context(), &signerv1.SignRequest{Fingerprints: []string{fp}})
	if err != nil {
		t.Fatal(err)
	}
	if !keys[0].Public().Verify(fp, resp.Results[0].Signatures[0]) {
		t.Error("signature does not verify")
	}
	if _, err := svc.Sign(t.Context(), &signerv1.SignRequest{Fingerprints: []string{fpWithRefs}}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("fingerprint of /nix/store: %v, want InvalidArgument", err)
	}
}
