// Package storepath handles Nix store paths: "<store dir>/<hash>-<name>",
// where the hash part is 32 nix32 characters (160 bits).
package storepath

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
// [A-Za-z0-9+-._?=], not starting with '.').
func ParseBase(base string) (Path, error) { panic("unimplemented") }

// Parse parses an absolute store path "<storeDir>/<hash>-<name>"; it must be
// directly inside storeDir (no further slashes, no "..").
func Parse(storeDir, abs string) (Path, error) { panic("unimplemented") }

// Base returns "<hash>-<name>".
func (p Path) Base() string { panic("unimplemented") }

// Absolute returns "<storeDir>/<hash>-<name>".
func (p Path) Absolute(storeDir string) string { panic("unimplemented") }

// ValidateHashPart checks that s is 32 nix32 characters.
func ValidateHashPart(s string) error { panic("unimplemented") }

// ValidateName checks a store path name as Nix does.
func ValidateName(s string) error { panic("unimplemented") }

// ValidateStoreDir checks a store directory: absolute, clean, not "/".
func ValidateStoreDir(dir string) error { panic("unimplemented") }
