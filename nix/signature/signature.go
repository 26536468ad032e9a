// Package signature implements Nix's binary-cache keys and narinfo
// signatures: ed25519 over a path's fingerprint.
package signature

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/nixcache/nixcache/nix/nixhash"
	"github.com/nixcache/nixcache/nix/storepath"
)

// maxKeyFileSize bounds what LoadSecretKeyFile reads: a key file is about
// 100 bytes.
const maxKeyFileSize = 4096

// SecretKey is a named ed25519 secret key. Its String, Format (%v) and
// LogValue never reveal the key material; Encode does, on purpose.
type SecretKey struct {
	Name string
	key  keyFunc
}

// keyFunc returns the private key, held in its closure: reflection cannot
// reach into a closure, and fmt prints a func as an address, so no way of
// printing a SecretKey (even nested in another struct's unexported field,
// where fmt cannot call its methods, or with a verb fmt finds bad) shows
// key bytes.
type keyFunc func() ed25519.PrivateKey

// newSecretKey wraps a private key.
func newSecretKey(name string, priv ed25519.PrivateKey) SecretKey {
	return SecretKey{Name: name, key: func() ed25519.PrivateKey { return priv }}
}

// priv returns the private key, or nil for the zero SecretKey.
func (k SecretKey) priv() ed25519.PrivateKey {
	if k.key == nil {
		return nil
	}
	return k.key()
}

// PublicKey is a named ed25519 public key.
type PublicKey struct {
	Name string
	Key  ed25519.PublicKey
}

// Generate makes a new key pair named name.
func Generate(name string) (SecretKey, error) {
	if err := validateKeyName(name); err != nil {
		return SecretKey{}, err
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return SecretKey{}, fmt.Errorf("generate key %q: %w", name, err)
	}
	return newSecretKey(name, priv), nil
}

// ParseSecretKey parses "<name>:<base64 of 64 bytes: seed then public key>",
// the format of nix-store --generate-binary-cache-key.
func ParseSecretKey(s string) (SecretKey, error) {
	name, b64, err := splitNamed("secret key", s)
	if err != nil {
		return SecretKey{}, err
	}
	// Errors below never quote b64: it is the secret.
	raw, err := base64.StdEncoding.Strict().DecodeString(b64)
	if err != nil {
		return SecretKey{}, fmt.Errorf("secret key %q: key is not valid base64", name)
	}
	if len(raw) != ed25519.PrivateKeySize {
		return SecretKey{}, fmt.Errorf("secret key %q: key is %d bytes, want %d", name, len(raw), ed25519.PrivateKeySize)
	}
	priv := ed25519.NewKeyFromSeed(raw[:ed25519.SeedSize])
	if subtle.ConstantTimeCompare(priv[ed25519.SeedSize:], raw[ed25519.SeedSize:]) != 1 {
		return SecretKey{}, fmt.Errorf("secret key %q: public half does not match the seed", name)
	}
	return newSecretKey(name, priv), nil
}

// LoadSecretKeyFile reads a secret key file; it refuses a file that is
// readable or writable by group or others, saying so.
func LoadSecretKeyFile(path string) (SecretKey, error) {
	f, err := os.Open(path)
	if err != nil {
		return SecretKey{}, fmt.Errorf("load secret key: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return SecretKey{}, fmt.Errorf("load secret key: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return SecretKey{}, fmt.Errorf("load secret key %s: not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o066 != 0 {
		return SecretKey{}, fmt.Errorf("load secret key %s: file mode %04o lets group or others read or write it; run chmod 600 %s", path, perm, path)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFileSize+1))
	if err != nil {
		return SecretKey{}, fmt.Errorf("load secret key %s: %w", path, err)
	}
	if len(data) > maxKeyFileSize {
		return SecretKey{}, fmt.Errorf("load secret key %s: larger than %d bytes, not a key file", path, maxKeyFileSize)
	}
	k, err := ParseSecretKey(strings.TrimSpace(string(data)))
	if err != nil {
		return SecretKey{}, fmt.Errorf("load secret key %s: %w", path, err)
	}
	return k, nil
}

// Encode returns the secret key file contents (no newline). Handle with care.
func (k SecretKey) Encode() string {
	return k.Name + ":" + base64.StdEncoding.EncodeToString(k.priv())
}

// Public returns the public half.
func (k SecretKey) Public() PublicKey {
	priv := k.priv()
	if len(priv) != ed25519.PrivateKeySize {
		return PublicKey{Name: k.Name}
	}
	return PublicKey{Name: k.Name, Key: priv.Public().(ed25519.PublicKey)}
}

// Sign signs a fingerprint and returns "<name>:<base64 signature>".
// It panics on the zero SecretKey, which has no key to sign with.
func (k SecretKey) Sign(fingerprint string) string {
	priv := k.priv()
	if len(priv) != ed25519.PrivateKeySize {
		panic("signature: Sign with a SecretKey that holds no key")
	}
	return k.Name + ":" + base64.StdEncoding.EncodeToString(ed25519.Sign(priv, []byte(fingerprint)))
}

// String redacts the key: "SecretKey(<name>, redacted)".
func (k SecretKey) String() string { return "SecretKey(" + k.Name + ", redacted)" }

// GoString redacts the key too.
func (k SecretKey) GoString() string { return k.String() }

// Format redacts the key for every verb of the fmt package (%v, %+v, %#v,
// %s, %q, %x...), so that no formatting reaches the key field.
func (k SecretKey) Format(f fmt.State, verb rune) {
	switch verb {
	case 'q':
		fmt.Fprintf(f, "%q", k.String())
	default:
		io.WriteString(f, k.String())
	}
}

// LogValue redacts the key in slog output.
func (k SecretKey) LogValue() slog.Value {
	return slog.GroupValue(slog.String("name", k.Name), slog.String("key", "redacted"))
}

// ParsePublicKey parses "<name>:<base64 of 32 bytes>".
func ParsePublicKey(s string) (PublicKey, error) {
	name, b64, err := splitNamed("public key", s)
	if err != nil {
		return PublicKey{}, err
	}
	raw, err := base64.StdEncoding.Strict().DecodeString(b64)
	if err != nil {
		return PublicKey{}, fmt.Errorf("public key %q: key %q is not valid base64", name, b64)
	}
	if len(raw) != ed25519.PublicKeySize {
		return PublicKey{}, fmt.Errorf("public key %q: key is %d bytes, want %d", name, len(raw), ed25519.PublicKeySize)
	}
	return PublicKey{Name: name, Key: ed25519.PublicKey(raw)}, nil
}

// String returns "<name>:<base64>", as trusted-public-keys takes it.
func (p PublicKey) String() string {
	return p.Name + ":" + base64.StdEncoding.EncodeToString(p.Key)
}

// Verify reports whether sig ("<name>:<base64>") is this key's valid
// signature of fingerprint; a signature by another key name is false.
func (p PublicKey) Verify(fingerprint, sig string) bool {
	name, raw, err := SplitSignature(sig)
	if err != nil || name != p.Name || len(p.Key) != ed25519.PublicKeySize {
		return false
	}
	return ed25519.Verify(p.Key, []byte(fingerprint), raw)
}

// SplitSignature splits "<name>:<base64 of 64 bytes>" and validates it.
func SplitSignature(sig string) (name string, raw []byte, err error) {
	name, b64, err := splitNamed("signature", sig)
	if err != nil {
		return "", nil, err
	}
	raw, err = base64.StdEncoding.Strict().DecodeString(b64)
	if err != nil {
		return "", nil, fmt.Errorf("signature by %q: %s is not valid base64", name, clip(b64))
	}
	if len(raw) != ed25519.SignatureSize {
		return "", nil, fmt.Errorf("signature by %q: %d bytes, want %d", name, len(raw), ed25519.SignatureSize)
	}
	return name, raw, nil
}

// splitNamed splits "<name>:<rest>" at the first colon, as Nix does, and
// validates the name. what names the thing for errors; s itself is quoted
// only when it has no colon, i.e. holds no key material worth hiding.
func splitNamed(what, s string) (name, rest string, err error) {
	name, rest, ok := strings.Cut(s, ":")
	if !ok {
		return "", "", fmt.Errorf("%s: no ':' between name and key (want <name>:<base64>)", what)
	}
	if err := validateKeyName(name); err != nil {
		return "", "", fmt.Errorf("%s: %w", what, err)
	}
	if rest == "" {
		return "", "", fmt.Errorf("%s %q: empty after the name", what, name)
	}
	return name, rest, nil
}

// validateKeyName checks a key name: non-empty, valid UTF-8, no ':', no
// spaces or control characters (it is written into narinfo Sig lines and
// space-separated trusted-public-keys lists).
func validateKeyName(name string) error {
	if name == "" {
		return errors.New("empty key name")
	}
	if len(name) > 256 {
		return fmt.Errorf("key name %s is longer than 256 bytes", clip(name))
	}
	if !utf8.ValidString(name) {
		return fmt.Errorf("key name %s is not valid UTF-8", clip(name))
	}
	for _, r := range name {
		if r == ':' || unicode.IsSpace(r) || unicode.IsControl(r) {
			return fmt.Errorf("key name %s contains %q", clip(name), r)
		}
	}
	return nil
}

// Fingerprint builds the string Nix signs:
// "1;<storePath>;<narHash as sha256:nix32>;<narSize>;<refs as absolute paths, sorted, comma-joined>".
// storePath is absolute; references are base names, made absolute with storeDir.
func Fingerprint(storeDir, storePath string, narHash nixhash.Hash, narSize uint64, references []string) string {
	refs := make([]string, len(references))
	for i, r := range references {
		refs[i] = storeDir + "/" + r
	}
	slices.Sort(refs)
	refs = slices.Compact(refs)
	return "1;" + storePath + ";" + narHash.String() + ";" + strconv.FormatUint(narSize, 10) + ";" + strings.Join(refs, ",")
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
func ParseFingerprint(storeDir, fp string) (ParsedFingerprint, error) {
	if err := storepath.ValidateStoreDir(storeDir); err != nil {
		return ParsedFingerprint{}, fmt.Errorf("fingerprint: %w", err)
	}
	fields := strings.Split(fp, ";")
	if len(fields) != 5 {
		return ParsedFingerprint{}, fmt.Errorf("fingerprint: %d ';'-separated fields, want 5", len(fields))
	}
	if fields[0] != "1" {
		return ParsedFingerprint{}, fmt.Errorf("fingerprint: version %s, want \"1\"", clip(fields[0]))
	}
	var out ParsedFingerprint
	if _, err := storepath.Parse(storeDir, fields[1]); err != nil {
		return ParsedFingerprint{}, fmt.Errorf("fingerprint: store path: %w", err)
	}
	out.StorePath = fields[1]

	digest, ok := strings.CutPrefix(fields[2], "sha256:")
	if !ok || len(digest) != 52 {
		return ParsedFingerprint{}, fmt.Errorf("fingerprint: nar hash %s is not sha256:<52 nix32 characters>", clip(fields[2]))
	}
	h, err := nixhash.ParseAs(nixhash.SHA256, digest)
	if err != nil {
		return ParsedFingerprint{}, fmt.Errorf("fingerprint: nar hash: %w", err)
	}
	out.NarHash = h

	size := fields[3]
	if size == "" || size[0] == '0' || strings.Trim(size, "0123456789") != "" {
		return ParsedFingerprint{}, fmt.Errorf("fingerprint: nar size %s is not a decimal number > 0 without leading zeros", clip(size))
	}
	n, err := strconv.ParseUint(size, 10, 64)
	if err != nil {
		return ParsedFingerprint{}, fmt.Errorf("fingerprint: nar size %s does not fit in 64 bits", clip(size))
	}
	out.NarSize = n

	if fields[4] != "" {
		refs := strings.Split(fields[4], ",")
		for i, r := range refs {
			if _, err := storepath.Parse(storeDir, r); err != nil {
				return ParsedFingerprint{}, fmt.Errorf("fingerprint: reference %d: %w", i+1, err)
			}
			if i > 0 && r <= refs[i-1] {
				return ParsedFingerprint{}, fmt.Errorf("fingerprint: references not sorted and unique at %s", clip(r))
			}
		}
		out.References = refs
	}
	return out, nil
}

// clip quotes s for an error message, cut short when it is long.
func clip(s string) string {
	const max = 128
	if len(s) > max {
		return fmt.Sprintf("%q...", s[:max])
	}
	return fmt.Sprintf("%q", s)
}
