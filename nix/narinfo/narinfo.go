// Package narinfo reads and writes .narinfo files as the Nix client does.
package narinfo

import (
	"io"

	"github.com/nixcache/nixcache/nix/nixhash"
)

// MaxSize is the largest narinfo Parse accepts, in bytes.
const MaxSize = 1 << 20

// NarInfo is one parsed narinfo.
type NarInfo struct {
	StorePath   string // absolute store path
	URL         string // relative to the cache root
	Compression string // "" when absent (Nix then assumes bzip2); see EffectiveCompression
	FileHash    nixhash.Hash // zero when absent
	FileSize    uint64       // 0 when absent
	NarHash     nixhash.Hash
	NarSize     uint64
	References  []string // base names, as written
	Deriver     string   // base name, "" when absent
	Sigs        []string
	CA          string
}

// Parse reads a narinfo as Nix's parser does: lines "Key: value"; StorePath,
// URL, NarHash and a non-zero NarSize are required; unknown keys are ignored;
// a missing Compression means bzip2; a repeated References or CA is an
// error; hashes in any of Nix's encodings are accepted. It also validates
// what Nix validates: StorePath, References and Deriver are well-formed
// store paths of storeDir. At most MaxSize bytes are read.
func Parse(r io.Reader, storeDir string) (*NarInfo, error) { panic("unimplemented") }

// EffectiveCompression returns Compression, or "bzip2" when it is empty.
func (n *NarInfo) EffectiveCompression() string { panic("unimplemented") }

// String renders the narinfo in the key order Nix writes, hashes as
// "sha256:<nix32>", with the References line always present and optional
// keys only when set.
func (n *NarInfo) String() string { panic("unimplemented") }

// Fingerprint returns the fingerprint Nix signs for this narinfo (see
// signature.Fingerprint).
func (n *NarInfo) Fingerprint(storeDir string) (string, error) { panic("unimplemented") }
