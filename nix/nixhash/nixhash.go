// Package nixhash parses and prints hashes the way Nix does.
package nixhash

import (
	"bytes"
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"hash"
	"strings"

	"github.com/nixcache/nixcache/nix/nixbase32"
)

// Algorithm is a hash algorithm Nix knows.
type Algorithm uint8

const (
	MD5 Algorithm = iota + 1
	SHA1
	SHA256
	SHA512
)

// String returns Nix's name for the algorithm ("sha256").
func (a Algorithm) String() string {
	switch a {
	case MD5:
		return "md5"
	case SHA1:
		return "sha1"
	case SHA256:
		return "sha256"
	case SHA512:
		return "sha512"
	}
	return fmt.Sprintf("Algorithm(%d)", uint8(a))
}

// Size is the digest length in bytes.
func (a Algorithm) Size() int {
	switch a {
	case MD5:
		return md5.Size
	case SHA1:
		return sha1.Size
	case SHA256:
		return sha256.Size
	case SHA512:
		return sha512.Size
	}
	return 0
}

// New returns a hash.Hash computing this algorithm.
func (a Algorithm) New() hash.Hash {
	switch a {
	case MD5:
		return md5.New()
	case SHA1:
		return sha1.New()
	case SHA256:
		return sha256.New()
	case SHA512:
		return sha512.New()
	}
	panic(fmt.Sprintf("nixhash: New of unknown algorithm %d", uint8(a)))
}

// valid reports whether a is one of the known algorithms.
func (a Algorithm) valid() bool { return a >= MD5 && a <= SHA512 }

// ParseAlgorithm parses "md5", "sha1", "sha256", "sha512".
func ParseAlgorithm(s string) (Algorithm, error) {
	switch s {
	case "md5":
		return MD5, nil
	case "sha1":
		return SHA1, nil
	case "sha256":
		return SHA256, nil
	case "sha512":
		return SHA512, nil
	}
	return 0, fmt.Errorf("unknown hash algorithm %q", s)
}

// Hash is a digest with its algorithm.
type Hash struct {
	Algo   Algorithm
	Digest []byte
}

// Parse accepts every form Nix accepts for a typed hash:
// "<algo>:<nix32|hex|base64>" and SRI "<algo>-<base64>".
func Parse(s string) (Hash, error) {
	algo, rest, sri, typed, err := splitType(s)
	if err != nil {
		return Hash{}, err
	}
	if !typed {
		return Hash{}, fmt.Errorf("hash %q: no algorithm prefix (want \"<algo>:\" or \"<algo>-\")", s)
	}
	return decode(s, algo, rest, sri)
}

// ParseAs parses s, which may also be untyped ("<nix32|hex|base64>"), as a
// hash of algorithm algo; a typed s of another algorithm is an error.
func ParseAs(algo Algorithm, s string) (Hash, error) {
	if !algo.valid() {
		return Hash{}, fmt.Errorf("hash %q: unknown algorithm %d requested", s, uint8(algo))
	}
	got, rest, sri, typed, err := splitType(s)
	if err != nil {
		return Hash{}, err
	}
	if !typed {
		return decode(s, algo, s, false)
	}
	if got != algo {
		return Hash{}, fmt.Errorf("hash %q: algorithm is %s, want %s", s, got, algo)
	}
	return decode(s, algo, rest, sri)
}

// splitType takes the type prefix off s as Nix does: "<algo>:" first, else
// "<algo>-" (SRI). typed is false when s has neither separator.
func splitType(s string) (algo Algorithm, rest string, sri, typed bool, err error) {
	prefix, rest, ok := strings.Cut(s, ":")
	if !ok {
		prefix, rest, ok = strings.Cut(s, "-")
		sri = ok
	}
	if !ok {
		return 0, s, false, false, nil
	}
	algo, err = ParseAlgorithm(prefix)
	if err != nil {
		return 0, "", false, false, fmt.Errorf("hash %q: %w", s, err)
	}
	return algo, rest, sri, true, nil
}

// decode decodes the digest rest of a hash of algorithm algo; the encoding
// is chosen by length, as Nix does, except for SRI, which is always base64.
func decode(orig string, algo Algorithm, rest string, sri bool) (Hash, error) {
	size := algo.Size()
	var (
		digest []byte
		err    error
		what   string
	)
	switch {
	case sri:
		what = "SRI base64"
		digest, err = decodeBase64(rest)
	case len(rest) == hex.EncodedLen(size):
		what = "hex"
		digest, err = hex.DecodeString(rest)
	case len(rest) == nixbase32.EncodedLen(size):
		what = "nix32"
		digest, err = nixbase32.DecodeString(rest)
	case len(rest) == base64.StdEncoding.EncodedLen(size):
		what = "base64"
		digest, err = base64.StdEncoding.Strict().DecodeString(rest)
	default:
		return Hash{}, fmt.Errorf("hash %q: wrong length %d for %s (want %d hex, %d nix32 or %d base64 characters)",
			orig, len(rest), algo, hex.EncodedLen(size), nixbase32.EncodedLen(size), base64.StdEncoding.EncodedLen(size))
	}
	if err != nil {
		return Hash{}, fmt.Errorf("hash %q: invalid %s: %w", orig, what, err)
	}
	if len(digest) != size {
		return Hash{}, fmt.Errorf("hash %q: %s digest is %d bytes, want %d for %s", orig, what, len(digest), size, algo)
	}
	return Hash{Algo: algo, Digest: digest}, nil
}

// decodeBase64 decodes standard base64, padded or (as Nix also accepts in
// SRI hashes) unpadded.
func decodeBase64(s string) ([]byte, error) {
	if strings.HasSuffix(s, "=") || len(s)%4 == 0 {
		return base64.StdEncoding.Strict().DecodeString(s)
	}
	return base64.RawStdEncoding.Strict().DecodeString(s)
}

// String is the form narinfos and fingerprints use: "sha256:<nix32>".
// The zero Hash prints as "".
func (h Hash) String() string {
	if h.IsZero() {
		return ""
	}
	return h.Algo.String() + ":" + nixbase32.EncodeToString(h.Digest)
}

// NixBase32 returns the digest alone in nix32.
func (h Hash) NixBase32() string { return nixbase32.EncodeToString(h.Digest) }

// SRI returns "sha256-<base64>".
func (h Hash) SRI() string {
	return h.Algo.String() + "-" + base64.StdEncoding.EncodeToString(h.Digest)
}

// Hex returns the digest in lower-case hex.
func (h Hash) Hex() string { return hex.EncodeToString(h.Digest) }

// Equal reports whether both hashes have the same algorithm and digest.
func (h Hash) Equal(o Hash) bool {
	return h.Algo == o.Algo && bytes.Equal(h.Digest, o.Digest)
}

// IsZero reports whether h is the zero Hash.
func (h Hash) IsZero() bool { return h.Algo == 0 && len(h.Digest) == 0 }

// Sum returns the SHA-256 Hash of a finished hash.Hash of that algorithm
// (convenience for streaming: h := SHA256.New(); io.Copy(h, r); FromHasher(SHA256, h)).
func FromHasher(a Algorithm, h hash.Hash) Hash {
	return Hash{Algo: a, Digest: h.Sum(nil)}
}
