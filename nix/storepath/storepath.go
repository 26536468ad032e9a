// Package storepath handles Nix store paths: "<store dir>/<hash>-<name>",
// where the hash part is 32 nix32 characters (160 bits).
package storepath

import (
	"errors"
	"fmt"
	"path"
	"strings"

	"github.com/nixcache/nixcache/nix/nixbase32"
)

// DefaultStoreDir is the store directory of every standard Nix install.
const DefaultStoreDir = "/nix/store"

// HashPartLen is the length of a store path's hash part.
const HashPartLen = 32

// MaxNameLen is the longest store path name Nix accepts.
const MaxNameLen = 211

// Path is a store path without its store directory.
type Path struct {
	HashPart string // 32 nix32 characters
	Name     string
}

// ParseBase parses a base name "<hash>-<name>" and validates both parts as
// Nix does (hash: 32 nix32 characters; name: 1..211 characters of
// [A-Za-z0-9+-._?=]; like Nix 2.8, a leading '.' is allowed,
// as in "<hash>-.config": the hash part keeps the base name a plain name).
func ParseBase(base string) (Path, error) {
	if len(base) < HashPartLen+2 {
		return Path{}, fmt.Errorf("store path %s: too short to be <hash>-<name>", clip(base))
	}
	if base[HashPartLen] != '-' {
		return Path{}, fmt.Errorf("store path %s: no '-' after the %d-character hash part", clip(base), HashPartLen)
	}
	p := Path{HashPart: base[:HashPartLen], Name: base[HashPartLen+1:]}
	if err := ValidateHashPart(p.HashPart); err != nil {
		return Path{}, fmt.Errorf("store path %s: %w", clip(base), err)
	}
	if err := ValidateName(p.Name); err != nil {
		return Path{}, fmt.Errorf("store path %s: %w", clip(base), err)
	}
	return p, nil
}

// Parse parses an absolute store path "<storeDir>/<hash>-<name>"; it must be
// directly inside storeDir (no further slashes, no "..").
func Parse(storeDir, abs string) (Path, error) {
	if err := ValidateStoreDir(storeDir); err != nil {
		return Path{}, err
	}
	base, ok := strings.CutPrefix(abs, storeDir+"/")
	if !ok {
		return Path{}, fmt.Errorf("path %s is not in the store %s", clip(abs), storeDir)
	}
	if strings.Contains(base, "/") {
		return Path{}, fmt.Errorf("path %s is not directly inside the store %s", clip(abs), storeDir)
	}
	return ParseBase(base)
}

// Base returns "<hash>-<name>".
func (p Path) Base() string { return p.HashPart + "-" + p.Name }

// Absolute returns "<storeDir>/<hash>-<name>".
func (p Path) Absolute(storeDir string) string { return storeDir + "/" + p.Base() }

// ValidateHashPart checks that s is 32 nix32 characters.
func ValidateHashPart(s string) error {
	if len(s) != HashPartLen {
		return fmt.Errorf("hash part %s: length %d, want %d", clip(s), len(s), HashPartLen)
	}
	if !nixbase32.ValidString(s) {
		return fmt.Errorf("hash part %q: not nix32 (alphabet %s)", s, nixbase32.Alphabet)
	}
	return nil
}

// ValidateName checks a store path name as Nix does.
func ValidateName(s string) error {
	switch {
	case s == "":
		return errors.New("empty name")
	case len(s) > MaxNameLen:
		return fmt.Errorf("name is %d characters, longer than %d", len(s), MaxNameLen)
	}
	for i := 0; i < len(s); i++ {
		if !nameChar(s[i]) {
			return fmt.Errorf("name %s: illegal character %q (allowed: A-Z a-z 0-9 + - . _ ? =)", clip(s), s[i])
		}
	}
	return nil
}

// nameChar reports whether c may appear in a store path name.
func nameChar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	switch c {
	case '+', '-', '.', '_', '?', '=':
		return true
	}
	return false
}

// ValidateStoreDir checks a store directory: absolute, clean, not "/".
func ValidateStoreDir(dir string) error {
	switch {
	case !strings.HasPrefix(dir, "/"):
		return fmt.Errorf("store directory %s is not absolute", clip(dir))
	case dir == "/":
		return errors.New(`store directory "/" is not allowed`)
	case path.Clean(dir) != dir:
		return fmt.Errorf("store directory %s is not clean (want %s)", clip(dir), clip(path.Clean(dir)))
	case strings.ContainsAny(dir, "\x00\n"):
		return fmt.Errorf("store directory %s contains a NUL or newline", clip(dir))
	}
	return nil
}

// clip quotes s for an error message, cut short when it is long (an error
// must stay readable when the input is hostile).
func clip(s string) string {
	const max = 256
	if len(s) > max {
		return fmt.Sprintf("%q...", s[:max])
	}
	return fmt.Sprintf("%q", s)
}
