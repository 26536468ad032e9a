package nixbase32_test

import (
	"bytes"
	"encoding/hex"
	"math/big"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/nixcache/nixcache/nix/nixbase32"
	"github.com/nixcache/nixcache/nix/nixtest"
)

// Vectors printed by Nix 2.8 (nix-hash --type T --to-base32 HEX).
var vectors = []struct {
	hex, nix32 string
}{
	{"00000000000000000000000000000001", "01000000000000000000000000"},
	{"ffffffffffffffffffffffffffffffff", "7zzzzzzzzzzzzzzzzzzzzzzzzz"},
	{"0123456789abcdef0123456789abcdef", "7grnmqjrs54c0yzkdbi5kla8q1"},
	{"0123456789abcdef0123456789abcdef01234567", "cx2j60ggrnmqjrs54c0yzkdbi5kla8q1"},
	{"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"},
}

func TestVectors(t *testing.T) {
	for _, v := range vectors {
		b, _ := hex.DecodeString(v.hex)
		if got := nixbase32.EncodeToString(b); got != v.nix32 {
			t.Errorf("EncodeToString(%s) = %s, want %s", v.hex, got, v.nix32)
		}
		got, err := nixbase32.DecodeString(v.nix32)
		if err != nil || !bytes.Equal(got, b) {
			t.Errorf("DecodeString(%s) = %x, %v; want %s", v.nix32, got, err, v.hex)
		}
	}
}

// TestAgainstNix encodes random digests of every hash size with nix-hash
// and compares.
func TestAgainstNix(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, c := range []struct {
		algo string
		size int
	}{{"md5", 16}, {"sha1", 20}, {"sha256", 32}, {"sha512", 64}} {
		var digests [][]byte
		args := []string{"--type", c.algo, "--to-base32"}
		for range 8 {
			b := make([]byte, c.size)
			for i := range b {
				b[i] = byte(rng.Uint32())
			}
			digests = append(digests, b)
			args = append(args, hex.EncodeToString(b))
		}
		lines := strings.Fields(nixtest.Run(t, "nix-hash", args...))
		if len(lines) != len(digests) {
			t.Fatalf("nix-hash printed %d lines, want %d", len(lines), len(digests))
		}
		for i, b := range digests {
			if got := nixbase32.EncodeToString(b); got != lines[i] {
				t.Errorf("%s: EncodeToString(%x) = %s, nix-hash says %s", c.algo, b, got, lines[i])
			}
			back, err := nixbase32.DecodeString(lines[i])
			if err != nil || !bytes.Equal(back, b) {
				t.Errorf("%s: DecodeString(%s) = %x, %v; want %x", c.algo, lines[i], back, err, b)
			}
		}
	}
}

// bigEncode is an independent statement of the encoding: the bytes are a
// little-endian number, written in base 32, most significant digit first.
func bigEncode(b []byte) string {
	le := make([]byte, len(b))
	for i := range b {
		le[len(b)-1-i] = b[i]
	}
	v := new(big.Int).SetBytes(le)
	n := nixbase32.EncodedLen(len(b))
	out := make([]byte, n)
	mask := big.NewInt(31)
	for k := range n {
		d := new(big.Int).Rsh(v, uint(5*k))
		out[n-1-k] = nixbase32.Alphabet[d.And(d, mask).Int64()]
	}
	return string(out)
}

func TestRoundTripAllLengths(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for n := range 100 {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		s := nixbase32.EncodeToString(b)
		if len(s) != nixbase32.EncodedLen(n) {
			t.Fatalf("len(EncodeToString(%d bytes)) = %d, EncodedLen says %d", n, len(s), nixbase32.EncodedLen(n))
		}
		if want := bigEncode(b); s != want {
			t.Fatalf("EncodeToString(%x) = %s, want %s", b, s, want)
		}
		if nixbase32.DecodedLen(len(s)) != n {
			t.Fatalf("DecodedLen(%d) = %d, want %d", len(s), nixbase32.DecodedLen(len(s)), n)
		}
		back, err := nixbase32.DecodeString(s)
		if err != nil || !bytes.Equal(back, b) {
			t.Fatalf("DecodeString(%s) = %x, %v; want %x", s, back, err, b)
		}
		if !nixbase32.ValidString(s) {
			t.Fatalf("ValidString(%s) = false", s)
		}
	}
}

func TestDecodeErrors(t *testing.T) {
	valid := vectors[4].nix32
	tests := []struct {
		name, in, wantErr string
	}{
		{"letter e", "e" + valid[1:], "invalid character"},
		{"letter o", valid[:10] + "o" + valid[11:], "invalid character"},
		{"letter t", valid[:51] + "t", "invalid character"},
		{"letter u", "u" + valid[1:], "invalid character"},
		{"upper case", strings.ToUpper(valid), "invalid character"},
		{"space", " " + valid[1:], "invalid character"},
		{"NUL", "\x00" + valid[1:], "invalid character"},
		{"non-ASCII", "é" + valid[2:], "invalid character"},
		{"length 1", "0", "invalid length 1"},
		{"length 3", "000", "invalid length 3"},
		{"length 51", valid[1:], "invalid length 51"},
		{"length 54", "00" + valid, "invalid length 54"},
		// 52 characters carry 260 bits for 256: the top 4 must be zero,
		// so the first character is 0 or 1.
		{"padding bits sha256", "2" + valid[1:], "non-zero padding bits"},
		{"padding bits md5", "z" + vectors[0].nix32[1:], "non-zero padding bits"},
		{"padding bits 1 byte", "z0", "non-zero padding bits"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := nixbase32.DecodeString(tt.in)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("DecodeString(%q) = %x, %v; want error containing %q", tt.in, got, err, tt.wantErr)
			}
		})
	}
}

// TestPaddingBitsAsNix checks that Nix also rejects what we reject for
// non-zero padding bits, and accepts the largest value it can hold.
func TestPaddingBitsAsNix(t *testing.T) {
	valid := vectors[4].nix32
	if _, err := nixtest.Try(t, nil, "nix", "hash", "to-base16", "sha256:2"+valid[1:]); err == nil {
		t.Error("nix accepted a nix32 sha256 with non-zero padding bits; so should we?")
	}
	max := "1" + strings.Repeat("z", 51)
	out := strings.TrimSpace(nixtest.Run(t, "nix", "hash", "to-base16", "sha256:"+max))
	b, err := nixbase32.DecodeString(max)
	if err != nil || hex.EncodeToString(b) != out {
		t.Errorf("DecodeString(%s) = %x, %v; nix says %s", max, b, err, out)
	}
}

func TestEmpty(t *testing.T) {
	if s := nixbase32.EncodeToString(nil); s != "" {
		t.Errorf("EncodeToString(nil) = %q", s)
	}
	if b, err := nixbase32.DecodeString(""); err != nil || len(b) != 0 {
		t.Errorf("DecodeString(\"\") = %x, %v", b, err)
	}
}

func TestValidString(t *testing.T) {
	for s, want := range map[string]bool{
		"":                 true,
		nixbase32.Alphabet: true,
		"e":                false,
		"0a-":              false,
		"ABC":              false,
	} {
		if got := nixbase32.ValidString(s); got != want {
			t.Errorf("ValidString(%q) = %v, want %v", s, got, want)
		}
	}
}
