package signer

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nixcache/nixcache/nix/signature"
	"github.com/nixcache/nixcache/platform/metrics"
	signerv1 "github.com/nixcache/nixcache/proto/nixcache/signer/v1"
	"github.com/nixcache/nixcache/services/signer/internal/keyring"
)

// serveRing serves a Signer over the ring opened from cfg, counting into
// reg.
func serveRing(t *testing.T, cfg keyring.Config, reg prometheus.Registerer) signerv1.SignerServiceClient {
	t.Helper()
	ring, err := keyring.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	svc, err := New(Config{Ring: ring, StoreDir: storeDir, MaxBatch: 10, Metrics: metrics.NewSigner(reg, ring.Counts)})
	if err != nil {
		t.Fatal(err)
	}
	return serveService(t, svc)
}

// signers returns the names of the keys that signed fpNoRefs, checking
// each signature.
func signers(t *testing.T, client signerv1.SignerServiceClient) []string {
	t.Helper()
	resp, err := client.Sign(t.Context(), &signerv1.SignRequest{Fingerprints: []string{fpNoRefs}})
	if err != nil {
		t.Fatal(err)
	}
	list, err := client.ListKeys(t.Context(), &signerv1.ListKeysRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, sig := range resp.Results[0].Signatures {
		name, _, _ := strings.Cut(sig, ":")
		names = append(names, name)
		i := slices.IndexFunc(list.Keys, func(k *signerv1.PublicKey) bool { return k.Name == name })
		if i < 0 || !list.Keys[i].Active {
			t.Errorf("signed by %q, not an active key of %v", name, list.Keys)
			continue
		}
		pub, err := signature.ParsePublicKey(list.Keys[i].PublicKey)
		if err != nil || !pub.Verify(fpNoRefs, sig) {
			t.Errorf("signature by %q does not verify: %v", name, err)
		}
	}
	return names
}

func TestKeyManagement(t *testing.T) {
	files := t.TempDir()
	keyFile := filepath.Join(files, "secret.key")
	first := newKeys(t, "cache-1")[0]
	if err := os.WriteFile(keyFile, []byte(first.Encode()), 0o600); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "keys")
	cfg := keyring.Config{KeyFiles: []string{keyFile}, Dir: dir}
	reg := prometheus.NewPedanticRegistry()
	client := serveRing(t, cfg, reg)

	gen := func(name string) (*signerv1.PublicKey, error) {
		resp, err := client.GenerateKey(t.Context(), &signerv1.GenerateKeyRequest{Name: name})
		return resp.GetKey(), err
	}
	retire := func(name string) (*signerv1.PublicKey, error) {
		resp, err := client.RetireKey(t.Context(), &signerv1.RetireKeyRequest{Name: name})
		return resp.GetKey(), err
	}
	steps := []struct {
		name    string
		call    func() (*signerv1.PublicKey, error)
		code    codes.Code
		active  bool     // of the key answered, when OK
		signers []string // who signs afterwards
	}{
		{"generate cache-2", func() (*signerv1.PublicKey, error) { return gen("cache-2") }, codes.OK, true, []string{"cache-1", "cache-2"}},
		{"generate cache-2 again", func() (*signerv1.PublicKey, error) { return gen("cache-2") }, codes.AlreadyExists, false, []string{"cache-1", "cache-2"}},
		{"generate the key file's name", func() (*signerv1.PublicKey, error) { return gen("cache-1") }, codes.AlreadyExists, false, []string{"cache-1", "cache-2"}},
		{"generate no name", func() (*signerv1.PublicKey, error) { return gen("") }, codes.InvalidArgument, false, []string{"cache-1", "cache-2"}},
		{"generate a path", func() (*signerv1.PublicKey, error) { return gen("../../etc/x") }, codes.InvalidArgument, false, []string{"cache-1", "cache-2"}},
		{"generate a name with a space", func() (*signerv1.PublicKey, error) { return gen("a b") }, codes.InvalidArgument, false, []string{"cache-1", "cache-2"}},
		{"retire no name", func() (*signerv1.PublicKey, error) { return retire("") }, codes.InvalidArgument, false, []string{"cache-1", "cache-2"}},
		{"retire a bad name", func() (*signerv1.PublicKey, error) { return retire("a:b") }, codes.InvalidArgument, false, []string{"cache-1", "cache-2"}},
		{"retire an unknown key", func() (*signerv1.PublicKey, error) { return retire("cache-9") }, codes.NotFound, false, []string{"cache-1", "cache-2"}},
		{"retire cache-1", func() (*signerv1.PublicKey, error) { return retire("cache-1") }, codes.OK, false, []string{"cache-2"}},
		{"retire cache-1 again", func() (*signerv1.PublicKey, error) { return retire("cache-1") }, codes.OK, false, []string{"cache-2"}},
		{"retire the last active key", func() (*signerv1.PublicKey, error) { return retire("cache-2") }, codes.FailedPrecondition, false, []string{"cache-2"}},
	}
	for _, s := range steps {
		key, err := s.call()
		if status.Code(err) != s.code {
			t.Fatalf("%s: %v, want code %v", s.name, err, s.code)
		}
		if err == nil {
			if _, perr := signature.ParsePublicKey(key.GetPublicKey()); perr != nil || key.GetActive() != s.active {
				t.Errorf("%s: answered %v (%v), want a public key, active=%v", s.name, key, perr, s.active)
			}
		}
		if got := signers(t, client); !slices.Equal(got, s.signers) {
			t.Errorf("%s: signed by %v, want %v", s.name, got, s.signers)
		}
	}

	// ListKeys lists the retired key, inactive; a restart keeps it so.
	want := []string{"cache-1:false", "cache-2:true"}
	list := func(c signerv1.SignerServiceClient) []string {
		resp, err := c.ListKeys(t.Context(), &signerv1.ListKeysRequest{})
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, k := range resp.Keys {
			out = append(out, k.Name+":"+map[bool]string{true: "true", false: "false"}[k.Active])
			if strings.Contains(k.String(), strings.SplitN(first.Encode(), ":", 2)[1][:20]) {
				t.Errorf("ListKeys shows secret material: %v", k)
			}
		}
		return out
	}
	if got := list(client); !slices.Equal(got, want) {
		t.Errorf("ListKeys = %v, want %v", got, want)
	}
	restarted := serveRing(t, cfg, prometheus.NewPedanticRegistry())
	if got := list(restarted); !slices.Equal(got, want) {
		t.Errorf("after a restart, ListKeys = %v, want %v", got, want)
	}
	if got := signers(t, restarted); !slices.Equal(got, []string{"cache-2"}) {
		t.Errorf("after a restart, signed by %v, want [cache-2]", got)
	}

	// Every successful Sign above signed one fingerprint with each active key.
	const wantMetrics = `
# HELP nixcache_signer_active_keys Keys the signer signs with.
# TYPE nixcache_signer_active_keys gauge
nixcache_signer_active_keys 1
# HELP nixcache_signer_retired_keys Retired keys the signer still lists.
# TYPE nixcache_signer_retired_keys gauge
nixcache_signer_retired_keys 1
# HELP nixcache_signer_signatures_total Signatures made, by key name.
# TYPE nixcache_signer_signatures_total counter
nixcache_signer_signatures_total{key="cache-1"} 9
nixcache_signer_signatures_total{key="cache-2"} 12
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(wantMetrics)); err != nil {
		t.Error(err)
	}
}

func TestKeyManagementWithoutKeyDir(t *testing.T) {
	client := serve(t, newKeys(t, "cache-1", "cache-2"), 10)
	if _, err := client.GenerateKey(t.Context(), &signerv1.GenerateKeyRequest{Name: "cache-3"}); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "-key-dir") {
		t.Errorf("GenerateKey without -key-dir: %v, want FailedPrecondition naming -key-dir", err)
	}
	if _, err := client.RetireKey(t.Context(), &signerv1.RetireKeyRequest{Name: "cache-1"}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("RetireKey without -key-dir: %v, want FailedPrecondition", err)
	}
}
