// Package nixbase32 implements Nix's base-32 encoding: the alphabet
// "0123456789abcdfghijklmnpqrsvwxyz" (no e, o, t, u), with Nix's unusual
// bit order (the last character holds the lowest bits of the first byte).
package nixbase32

import "fmt"

// Alphabet is Nix's base-32 alphabet.
const Alphabet = "0123456789abcdfghijklmnpqrsvwxyz"

// invalid marks bytes outside the alphabet in decodeMap.
const invalid = 0xff

// decodeMap maps a byte to its digit value, or invalid.
var decodeMap = func() [256]byte {
	var m [256]byte
	for i := range m {
		m[i] = invalid
	}
	for i := 0; i < len(Alphabet); i++ {
		m[Alphabet[i]] = byte(i)
	}
	return m
}()

// EncodedLen returns the length of the encoding of n bytes.
func EncodedLen(n int) int {
	if n <= 0 {
		return 0
	}
	return (n*8-1)/5 + 1
}

// DecodedLen returns the number of bytes n characters decode to.
func DecodedLen(n int) int {
	if n <= 0 {
		return 0
	}
	return n * 5 / 8
}

// EncodeToString encodes b as Nix does.
//
// Character k of the output, counted from the end, holds bits 5k..5k+4 of b
// read as a little-endian number.
func EncodeToString(b []byte) string {
	n := EncodedLen(len(b))
	out := make([]byte, n)
	for k := 0; k < n; k++ {
		bit := k * 5
		i, j := bit/8, uint(bit%8)
		c := b[i] >> j
		if i+1 < len(b) {
			c |= b[i+1] << (8 - j)
		}
		out[n-1-k] = Alphabet[c&0x1f]
	}
	return string(out)
}

// DecodeString decodes s; it fails on characters outside the alphabet and on
// a length that no byte count encodes to, and on non-zero padding bits.
func DecodeString(s string) ([]byte, error) {
	size := DecodedLen(len(s))
	if EncodedLen(size) != len(s) {
		return nil, fmt.Errorf("nixbase32: invalid length %d", len(s))
	}
	out := make([]byte, size)
	for k := 0; k < len(s); k++ {
		c := s[len(s)-1-k]
		d := decodeMap[c]
		if d == invalid {
			return nil, fmt.Errorf("nixbase32: invalid character %q at offset %d", c, len(s)-1-k)
		}
		bit := k * 5
		i, j := bit/8, uint(bit%8)
		out[i] |= d << j
		hi := d >> (8 - j)
		if i+1 < size {
			out[i+1] |= hi
		} else if hi != 0 {
			return nil, fmt.Errorf("nixbase32: non-zero padding bits in %q", s)
		}
	}
	return out, nil
}

// ValidString reports whether s consists of alphabet characters only.
func ValidString(s string) bool {
	for i := 0; i < len(s); i++ {
		if decodeMap[s[i]] == invalid {
			return false
		}
	}
	return true
}
