// Package signature implements Nix's binary-cache keys and narinfo
// signatures: ed25519 over a path's fingerprint.
package signature

import (
	"crypto/ed25519"
	"log/slog"

	"github.com/nixcache/nixcache/nix/nixhash"
)

// SecretKey is a named ed25519 secret key. Its String, Format (%v) and
// LogValue never reveal the key material; Encode does, on purpose.
type SecretKey struct {
	Name string
	key  ed25519.PrivateKey
}

// PublicKey is a named ed25519 public key.
type PublicKey struct {
	Name string
	Key  ed25519.PublicKey
}

// Generate makes a new key pair named name.
func Generate(name string) (SecretKey, error) { panic("unimplemented") }

// ParseSecretKey parses "<name>:<base64 of 64 bytes: seed then public key>",
// the format of nix-store --generate-binary-cache-key.
func ParseSecretKey(s string) (SecretKey, error) { panic("unimplemented") }

// LoadSecretKeyFile reads a secret key file; it refuses a file that is
// readable or writable by group or others, saying so.
func LoadSecretKeyFile(path string) (SecretKey, error) { panic("unimplemented") }

// Encode returns the secret key file contents (no newline). Handle with care.
func (k SecretKey) Encode() string { panic("unimplemented") }

// Public returns the public half.
func (k SecretKey) Public() PublicKey { panic("unimplemented") }

// Sign signs a fingerprint and returns "<name>:<base64 signature>".
func (k SecretKey) Sign(fingerprint string) string { panic("unimplemented") }

// String redacts the key: "SecretKey(<name>, redacted)".
func (k SecretKey) String() string { panic("unimplemented") }

// GoString redacts the key too.
func (k SecretKey) GoString() string { return k.String() }

// LogValue redacts the key in slog output.
func (k SecretKey) LogValue() slog.Value { panic("unimplemented") }

// ParsePublicKey parses "<name>:<base64 of 32 bytes>".
func ParsePublicKey(s string) (PublicKey, error) { panic("unimplemented") }

// String returns "<name>:<base64>", as trusted-public-keys takes it.
func (p PublicKey) String() string { panic("unimplemented") }

// Verify reports whether sig ("<name>:<base64>") is this key's valid
// signature of fingerprint; a signature by another key name is false.
func (p PublicKey) Verify(fingerprint, sig string) bool { panic("unimplemented") }

// SplitSignature splits "<name>:<base64 of 64 bytes>" and validates it.
func SplitSignature(sig string) (name string, raw []byte, err error) { panic("unimplemented") }

// Fingerprint builds the string Nix signs:
// "1;<storePath>;<narHash as sha256:nix32>;<narSize>;<refs as absolute paths, sorted, comma-joined>".
// storePath is absolute; references are base names, made absolute with storeDir.
func Fingerprint(storeDir, storePath string, narHash nixhash.Hash, narSize uint64, references []string) string {
	panic("unimplemented")
}

// ParsedFingerprint is a fingerprint taken apart by ParseFingerprint.
type ParsedFingerprint struct {
	StorePath  string
	NarHash    nixhash.Hash
	NarSize    uint64
	References []string // absolute, sorted
}

// ParseFingerprint validates a fingerprint strictly: version "1", a valid
// absolute store path of storeDir, a "sha256:<nix32>" hash, a decimal size
// > 0 without leading zeros, references that are valid store paths, sorted
// and unique; nothing else (no newlines, no extra fields).
func ParseFingerprint(storeDir, fp string) (ParsedFingerprint, error) { panic("unimplemented") }
