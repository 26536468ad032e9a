package nixhash_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nixcache/nixcache/nix/nixhash"
	"github.com/nixcache/nixcache/nix/nixtest"
)

var algos = []nixhash.Algorithm{nixhash.MD5, nixhash.SHA1, nixhash.SHA256, nixhash.SHA512}

// TestAgainstNix hashes files with nix hash file in every encoding and
// checks that we parse each form to the same digest and print the same.
func TestAgainstNix(t *testing.T) {
	dir := t.TempDir()
	for i, content := range []string{"", "hi\n", strings.Repeat("nix", 1000)} {
		file := filepath.Join(dir, "f")
		if err := os.WriteFile(file, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		for _, algo := range algos {
			nix := func(base string) string {
				return strings.TrimSpace(nixtest.Run(t, "nix", "hash", "file", "--type", algo.String(), "--"+base, file))
			}
			hex, nix32, b64, sri := nix("base16"), nix("base32"), nix("base64"), nix("sri")

			h := algo.New()
			h.Write([]byte(content))
			ours := nixhash.FromHasher(algo, h)
			if ours.Hex() != hex || ours.NixBase32() != nix32 || ours.SRI() != sri {
				t.Errorf("content %d %s: we print %s %s %s; nix prints %s %s %s",
					i, algo, ours.Hex(), ours.NixBase32(), ours.SRI(), hex, nix32, sri)
			}
			if got, want := ours.String(), algo.String()+":"+nix32; got != want {
				t.Errorf("String() = %s, want %s", got, want)
			}
			for _, form := range []string{
				algo.String() + ":" + hex,
				algo.String() + ":" + strings.ToUpper(hex),
				algo.String() + ":" + nix32,
				algo.String() + ":" + b64,
				sri,
				strings.TrimRight(sri, "="), // Nix accepts unpadded SRI
			} {
				got, err := nixhash.Parse(form)
				if err != nil || !got.Equal(ours) {
					t.Errorf("Parse(%s) = %v, %v; want %v", form, got, err, ours)
				}
				got, err = nixhash.ParseAs(algo, form)
				if err != nil || !got.Equal(ours) {
					t.Errorf("ParseAs(%s, %s) = %v, %v; want %v", algo, form, got, err, ours)
				}
				// Nix agrees it is this hash.
				if out := strings.TrimSpace(nixtest.Run(t, "nix", "hash", "to-base16", "--type", algo.String(), form)); out != hex {
					t.Errorf("nix hash to-base16 %s = %s, want %s", form, out, hex)
				}
			}
			for _, untyped := range []string{hex, nix32, b64} {
				got, err := nixhash.ParseAs(algo, untyped)
				if err != nil || !got.Equal(ours) {
					t.Errorf("ParseAs(%s, %s) = %v, %v; want %v", algo, untyped, got, err, ours)
				}
				if _, err := nixhash.Parse(untyped); err == nil {
					t.Errorf("Parse(%s) of an untyped hash succeeded", untyped)
				}
			}
		}
	}
}

const (
	emptyHex   = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
	emptyNix32 = "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"
	emptyB64   = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
)

func TestParseErrors(t *testing.T) {
	tests := []struct {
		in, wantErr string
	}{
		{"", "no algorithm prefix"},
		{emptyNix32, "no algorithm prefix"},
		{"sha256", "no algorithm prefix"},
		{"sha256:", "wrong length 0"},
		{"sha257:" + emptyNix32, `unknown hash algorithm "sha257"`},
		{"SHA256:" + emptyNix32, `unknown hash algorithm "SHA256"`},
		{":" + emptyNix32, `unknown hash algorithm ""`},
		{"sha256:" + emptyNix32 + "0", "wrong length 53"},
		{"sha256:" + emptyHex[1:], "wrong length 63"},
		{"sha256:" + strings.TrimRight(emptyB64, "="), "wrong length 43"}, // base64 must be padded unless SRI
		{"sha256:" + strings.Replace(emptyNix32, "0", "e", 1), "invalid nix32"},
		{"sha256:" + strings.Replace(emptyHex, "e", "g", 1), "invalid hex"},
		{"sha256:" + strings.Replace(emptyB64, "4", "!", 1), "invalid base64"},
		{"sha256:2" + emptyNix32[1:], "non-zero padding bits"},
		{"sha1:" + emptyNix32, "wrong length 52"},
		{"md5:" + emptyHex, "wrong length 64"},
		{"sha256-" + emptyHex, "digest is 48 bytes"},
		{"sha256-" + emptyB64[:40], "digest is 30 bytes"},
		{"sha256-" + emptyB64 + "AAAA", "invalid SRI base64"},
		{"sha256:" + emptyNix32 + "\n", "wrong length 53"},
		{" sha256:" + emptyNix32, "unknown hash algorithm"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			h, err := nixhash.Parse(tt.in)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Parse(%q) = %v, %v; want error containing %q", tt.in, h, err, tt.wantErr)
			}
		})
	}
}

func TestParseAsErrors(t *testing.T) {
	tests := []struct {
		algo      nixhash.Algorithm
		in, wantE string
	}{
		{nixhash.SHA1, "sha256:" + emptyNix32, "algorithm is sha256, want sha1"},
		{nixhash.SHA512, "sha256-" + emptyB64, "algorithm is sha256, want sha512"},
		{nixhash.SHA1, emptyNix32, "wrong length 52 for sha1"},
		{nixhash.Algorithm(0), emptyNix32, "unknown algorithm"},
		{nixhash.Algorithm(9), emptyNix32, "unknown algorithm"},
	}
	for _, tt := range tests {
		h, err := nixhash.ParseAs(tt.algo, tt.in)
		if err == nil || !strings.Contains(err.Error(), tt.wantE) {
			t.Errorf("ParseAs(%d, %q) = %v, %v; want error containing %q", tt.algo, tt.in, h, err, tt.wantE)
		}
	}
}

func TestAlgorithm(t *testing.T) {
	for _, a := range algos {
		got, err := nixhash.ParseAlgorithm(a.String())
		if err != nil || got != a {
			t.Errorf("ParseAlgorithm(%s) = %v, %v", a, got, err)
		}
		if n := len(a.New().Sum(nil)); n != a.Size() {
			t.Errorf("%s: New gives %d bytes, Size says %d", a, n, a.Size())
		}
	}
	if _, err := nixhash.ParseAlgorithm("sha3"); err == nil {
		t.Error("ParseAlgorithm(sha3) succeeded")
	}
}

func TestZeroAndEqual(t *testing.T) {
	var zero nixhash.Hash
	if !zero.IsZero() || zero.String() != "" {
		t.Errorf("zero Hash: IsZero %v, String %q", zero.IsZero(), zero.String())
	}
	a, _ := nixhash.Parse("sha256:" + emptyNix32)
	b, _ := nixhash.Parse("sha256-" + emptyB64)
	if !a.Equal(b) || a.IsZero() {
		t.Errorf("%v and %v: Equal %v, IsZero %v", a, b, a.Equal(b), a.IsZero())
	}
	c := nixhash.Hash{Algo: nixhash.SHA512, Digest: a.Digest}
	if a.Equal(c) {
		t.Error("hashes of different algorithms are Equal")
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"sha256:" + emptyNix32, "sha256:" + emptyHex, "sha256:" + emptyB64, "sha256-" + emptyB64,
		"sha256-" + strings.TrimRight(emptyB64, "="), "md5:4yplxll7378zdi27ns7n4glkkn", "sha1-VcpihuPk9Pul0ESDM/qZ/FpASnM=",
		"sha512:", "x-y", ":", "-",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		h, err := nixhash.Parse(s)
		if err != nil {
			return
		}
		if len(h.Digest) != h.Algo.Size() {
			t.Fatalf("Parse(%q): %d-byte digest for %s", s, len(h.Digest), h.Algo)
		}
		for _, form := range []string{h.String(), h.SRI(), h.Algo.String() + ":" + h.Hex()} {
			back, err := nixhash.Parse(form)
			if err != nil || !back.Equal(h) {
				t.Fatalf("Parse(%q) = %v, %v; want %v", form, back, err, h)
			}
		}
		if back, err := nixhash.ParseAs(h.Algo, h.NixBase32()); err != nil || !bytes.Equal(back.Digest, h.Digest) {
			t.Fatalf("ParseAs(%s) = %v, %v", h.NixBase32(), back, err)
		}
	})
}
