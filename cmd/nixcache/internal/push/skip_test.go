package push

import (
	"crypto/sha256"
	"testing"

	"github.com/nixcache/nixcache/nix/daemon"
	"github.com/nixcache/nixcache/nix/nixhash"
	"github.com/nixcache/nixcache/nix/signature"
)

func TestSignedBySkipped(t *testing.T) {
	upstream, err := signature.Generate("upstream-1")
	if err != nil {
		t.Fatal(err)
	}
	impostor, err := signature.Generate("upstream-1") // same name, another key
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte("nar"))
	info := &daemon.PathInfo{StorePath: "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-x",
		NarHash: nixhash.Hash{Algo: nixhash.SHA256, Digest: sum[:]}, NarSize: 3}
	fp := signature.Fingerprint("/nix/store", info.StorePath, info.NarHash, info.NarSize, nil)
	signedBy := func(k signature.SecretKey) *daemon.PathInfo {
		i := *info
		i.Sigs = []string{"other-1:AAAA", k.Sign(fp)}
		return &i
	}
	tests := []struct {
		name string
		skip []string
		info *daemon.PathInfo
		want bool
	}{
		{"no keys named", nil, signedBy(upstream), false},
		{"by name", []string{"upstream-1"}, signedBy(upstream), true},
		{"another name", []string{"cache.nixos.org-1"}, signedBy(upstream), false},
		{"unsigned", []string{"upstream-1"}, info, false},
		{"by public key", []string{upstream.Public().String()}, signedBy(upstream), true},
		{"public key, forged signature", []string{upstream.Public().String()}, signedBy(impostor), false},
	}
	if _, err := parseSkipKeys([]string{"upstream-1:not-base64"}); err == nil {
		t.Error("a malformed public key was taken")
	}
	for _, tt := range tests {
		skip, err := parseSkipKeys(tt.skip)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		p := &Pusher{o: Options{StoreDir: "/nix/store"}, skip: skip}
		if got := p.signedBySkipped(tt.info); got != tt.want {
			t.Errorf("%s: skipped = %v, want %v", tt.name, got, tt.want)
		}
	}
}
