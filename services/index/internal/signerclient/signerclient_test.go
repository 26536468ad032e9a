package signerclient_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nixcache/nixcache/nix/signature"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	signerv1 "github.com/nixcache/nixcache/proto/nixcache/signer/v1"
	"github.com/nixcache/nixcache/services/index/internal/fault"
	"github.com/nixcache/nixcache/services/index/internal/signerclient"
)

// signFunc is a Signer.
type signFunc func(ctx context.Context, fps []string) ([][]string, error)

func (f signFunc) Sign(ctx context.Context, fps []string) ([][]string, error) { return f(ctx, fps) }

const storeDir = "/nix/store"

func testInfo() *indexv1.PathInfo {
	return &indexv1.PathInfo{
		StorePath: storeDir + "/" + strings.Repeat("1", 32) + "-hello",
		NarHash:   "sha256:" + strings.Repeat("0", 52),
		NarSize:   120,
	}
}

func TestPathsSign(t *testing.T) {
	key, err := signature.Generate("cache.example.org-1")
	if err != nil {
		t.Fatal(err)
	}
	good := signFunc(func(_ context.Context, fps []string) ([][]string, error) {
		out := make([][]string, len(fps))
		for i, fp := range fps {
			out[i] = []string{key.Sign(fp)}
		}
		return out, nil
	})
	answer := func(res [][]string, err error) signFunc {
		return func(context.Context, []string) ([][]string, error) { return res, err }
	}
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	tests := []struct {
		name   string
		ctx    context.Context
		signer signerclient.Signer
		class  error  // nil: no error
		want   string // in the error
	}{
		{"signed", context.Background(), good, nil, ""},
		{"signer down", context.Background(), answer(nil, errors.New("connection refused")), fault.ErrUnavailable, "signer unavailable: connection refused"},
		{"caller gone", gone, answer(nil, errors.New("canceled")), context.Canceled, "sign: context canceled"},
		{"no signature", context.Background(), answer([][]string{{}}, nil), fault.ErrUnavailable, "has it an active key?"},
		{"too few results", context.Background(), answer(nil, nil), fault.ErrUnavailable, "has it an active key?"},
		{"invalid signature", context.Background(), answer([][]string{{"no-colon"}}, nil), fault.ErrUnavailable, "invalid signature"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			paths := signerclient.Paths{Signer: tt.signer, StoreDir: storeDir, Timeout: time.Second}
			info := testInfo()
			sigs, err := paths.Sign(tt.ctx, []*indexv1.PathInfo{info})
			if tt.class == nil {
				if err != nil {
					t.Fatal(err)
				}
				fp, _ := paths.Fingerprint(info)
				if len(sigs) != 1 || len(sigs[0]) != 1 || !key.Public().Verify(fp, sigs[0][0]) {
					t.Fatalf("signatures %v do not verify for %q", sigs, fp)
				}
				return
			}
			if !errors.Is(err, tt.class) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want one of class %v saying %q", err, tt.class, tt.want)
			}
		})
	}
}

func TestPathsSignTimeout(t *testing.T) {
	hang := signFunc(func(ctx context.Context, _ []string) ([][]string, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	})
	paths := signerclient.Paths{Signer: hang, StoreDir: storeDir, Timeout: 50 * time.Millisecond}
	_, err := paths.Sign(context.Background(), []*indexv1.PathInfo{testInfo()})
	if !errors.Is(err, fault.ErrUnavailable) {
		t.Fatalf("error %v, want the signer unavailable", err)
	}
}

func TestPathsSignBadNarHash(t *testing.T) {
	info := testInfo()
	info.NarHash = "sha256:nope"
	called := false
	paths := signerclient.Paths{Signer: signFunc(func(context.Context, []string) ([][]string, error) {
		called = true
		return nil, nil
	}), StoreDir: storeDir, Timeout: time.Second}
	if _, err := paths.Sign(context.Background(), []*indexv1.PathInfo{info}); err == nil || !strings.Contains(err.Error(), "NarHash") {
		t.Errorf("error %v, want one naming the NarHash", err)
	}
	if called {
		t.Error("the signer was asked to sign a path whose NarHash does not parse")
	}
}

func TestMerge(t *testing.T) {
	sig := func(name string) string {
		k, err := signature.Generate(name)
		if err != nil {
			t.Fatal(err)
		}
		return k.Sign("fingerprint")
	}
	old, ours2, nix, up := sig("cache-1"), sig("cache-2"), sig("nix-1"), sig("up-1")
	ours := map[string]bool{"cache-1": true, "cache-2": true}
	tests := []struct {
		name         string
		signer, kept []string
		ours         map[string]bool
		want         []string
	}{
		{"nix's kept after ours", []string{ours2}, []string{nix}, nil, []string{ours2, nix}},
		{"no repeats", []string{ours2}, []string{ours2, nix}, nil, []string{ours2, nix}},
		{"our old ones replaced", []string{ours2}, []string{old, up}, ours, []string{ours2, up}},
		{"without ours every one kept", []string{ours2}, []string{old}, nil, []string{ours2, old}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := signerclient.Merge(tt.signer, tt.kept, tt.ours)
			if strings.Join(got, " ") != strings.Join(tt.want, " ") {
				t.Errorf("Merge = %v, want %v", got, tt.want)
			}
		})
	}
}

// keyRPC answers the key methods with err.
type keyRPC struct {
	signerv1.SignerServiceClient
	err error
}

func (k keyRPC) GenerateKey(context.Context, *signerv1.GenerateKeyRequest, ...grpc.CallOption) (*signerv1.GenerateKeyResponse, error) {
	return nil, k.err
}

func (k keyRPC) RetireKey(context.Context, *signerv1.RetireKeyRequest, ...grpc.CallOption) (*signerv1.RetireKeyResponse, error) {
	return nil, k.err
}

func (k keyRPC) ListKeys(context.Context, *signerv1.ListKeysRequest, ...grpc.CallOption) (*signerv1.ListKeysResponse, error) {
	return nil, k.err
}

// TestKeyErrors: the signer's verdicts keep their meaning; anything else
// is the signer unavailable.
func TestKeyErrors(t *testing.T) {
	tests := []struct {
		err   error
		class error
	}{
		{status.Error(codes.InvalidArgument, `"a b" is not a key name`), fault.ErrInvalid},
		{status.Error(codes.AlreadyExists, "exists"), fault.ErrExists},
		{status.Error(codes.NotFound, "no such key"), fault.ErrNotFound},
		{status.Error(codes.FailedPrecondition, "the last active key"), fault.ErrPrecondition},
		{status.Error(codes.Internal, "internal error"), fault.ErrUnavailable},
		{errors.New("connection refused"), fault.ErrUnavailable},
	}
	for _, tt := range tests {
		c := signerclient.New(keyRPC{err: tt.err})
		_, gerr := c.GenerateKey(context.Background(), time.Second, "k")
		rerr := c.RetireKey(context.Background(), time.Second, "k")
		_, lerr := c.Keys(context.Background(), time.Second)
		for _, err := range []error{gerr, rerr, lerr} {
			if !errors.Is(err, tt.class) {
				t.Errorf("signer's %v: error %v, want class %v", tt.err, err, tt.class)
			}
		}
	}
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	if err := signerclient.New(keyRPC{err: status.Error(codes.Canceled, "canceled")}).RetireKey(gone, time.Second, "k"); !errors.Is(err, context.Canceled) {
		t.Errorf("caller gone: error %v, want context.Canceled", err)
	}
}
