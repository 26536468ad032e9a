package artifact

import (
	"bytes"
	"encoding/json"
	"strings"

	"github.com/nixcache/nixcache/nix/storepath"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/fault"
)

// Bounds of keys and listings.
const (
	// maxBuildIDLen bounds a build id, in hex digits (a GNU build id is
	// 40; other linkers make up to 64).
	maxBuildIDLen = 128
	// maxOutputNameLen bounds an output name of a realisation id, so
	// that the id, "sha256:<64 hex>!<output>" (72 + output bytes), with
	// the longest encoding suffix (",bzip2") is a file name Linux takes
	// (NAME_MAX 255).
	maxOutputNameLen = 255 - len(",bzip2") - len("sha256:!") - 64
	// maxListingDepth bounds how deep a listing's directories nest
	// (PATH_MAX allows no more than 2048 levels).
	maxListingDepth = 2048
)

// ValidateKey checks key as the key of an artifact of kind, so that it is
// safe as a file name: an error of class fault.ErrInvalid says what is
// wrong.
func ValidateKey(kind indexv1.ArtifactKind, key string) error {
	switch kind {
	case indexv1.ArtifactKind_ARTIFACT_KIND_LOG:
		return ValidateDrvName(key)
	case indexv1.ArtifactKind_ARTIFACT_KIND_LISTING:
		if err := storepath.ValidateHashPart(key); err != nil {
			return fault.Invalid("listing key: %v", err)
		}
		return nil
	case indexv1.ArtifactKind_ARTIFACT_KIND_REALISATION:
		return ValidateRealisationID(key)
	case indexv1.ArtifactKind_ARTIFACT_KIND_DEBUG_INFO:
		return ValidateBuildID(key)
	}
	return fault.Invalid("unknown artifact kind %d", kind)
}

// ValidateDrvName checks a derivation's base name, "<hash>-<name>.drv".
func ValidateDrvName(s string) error {
	p, err := storepath.ParseBase(s)
	if err != nil {
		return fault.Invalid("derivation name %q: %v", trunc(s), err)
	}
	if !hasSuffix(p.Name, ".drv") {
		return fault.Invalid("derivation name %q does not end in .drv", trunc(s))
	}
	return nil
}

// ValidateBuildID checks an ELF build id: lowercase hex, an even number
// of digits, 2 to 128 of them.
func ValidateBuildID(s string) error {
	if len(s) < 2 || len(s) > maxBuildIDLen || len(s)%2 != 0 {
		return fault.Invalid("build id %q: want an even number (2 to %d) of hex digits", trunc(s), maxBuildIDLen)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return fault.Invalid("build id %q: %q is not a lowercase hex digit", trunc(s), c)
		}
	}
	return nil
}

// ValidateRealisationID checks a realisation id as Nix writes it:
// "sha256:<64 hex digits>!<output name>".
func ValidateRealisationID(s string) error {
	hash, output, ok := strings.Cut(s, "!")
	if !ok {
		return fault.Invalid("realisation id %q: want sha256:<hex>!<output>", trunc(s))
	}
	digest, ok := strings.CutPrefix(hash, "sha256:")
	if !ok || len(digest) != 64 {
		return fault.Invalid("realisation id %q: the derivation hash must be sha256:<64 hex digits>", trunc(s))
	}
	for i := 0; i < len(digest); i++ {
		if c := digest[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return fault.Invalid("realisation id %q: the derivation hash must be lowercase hex", trunc(s))
		}
	}
	if output == "" || len(output) > maxOutputNameLen || output[0] == '.' {
		return fault.Invalid("realisation id %q: bad output name", trunc(s))
	}
	for i := 0; i < len(output); i++ {
		c := output[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("+-._?=", c) >= 0) {
			return fault.Invalid("realisation id %q: output name has %q", trunc(s), c)
		}
	}
	return nil
}

// ValidateContent checks the JSON of a listing, realisation or debug-info
// link.
func ValidateContent(kind indexv1.ArtifactKind, key string, data []byte) error {
	switch kind {
	case indexv1.ArtifactKind_ARTIFACT_KIND_LISTING:
		return ValidateListing(data)
	case indexv1.ArtifactKind_ARTIFACT_KIND_REALISATION:
		return validateRealisation(key, data)
	case indexv1.ArtifactKind_ARTIFACT_KIND_DEBUG_INFO:
		return validateDebugInfo(data)
	}
	return nil
}

func decodeStrict(data []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(data))
	if err := d.Decode(v); err != nil {
		return err
	}
	if d.More() {
		return fault.Invalid("trailing data after the JSON value")
	}
	return nil
}

// realisation is the JSON of a realisation, as Nix 2.8 writes it.
type realisation struct {
	ID                    string            `json:"id"`
	OutPath               string            `json:"outPath"`
	Signatures            []string          `json:"signatures"`
	DependentRealisations map[string]string `json:"dependentRealisations"`
}

func validateRealisation(key string, data []byte) error {
	var r realisation
	if err := decodeStrict(data, &r); err != nil {
		return fault.Invalid("realisation %s: not the JSON of a realisation: %v", key, err)
	}
	if r.ID != key {
		return fault.Invalid("realisation: its id %q is not the %q of the URL", trunc(r.ID), key)
	}
	if _, err := storepath.ParseBase(r.OutPath); err != nil {
		return fault.Invalid("realisation %s: outPath %q: %v", key, trunc(r.OutPath), err)
	}
	for id, out := range r.DependentRealisations {
		if err := ValidateRealisationID(id); err != nil {
			return fault.Invalid("realisation %s: dependentRealisations: %v", key, err)
		}
		if _, err := storepath.ParseBase(out); err != nil {
			return fault.Invalid("realisation %s: dependentRealisations[%s]: %v", key, id, err)
		}
	}
	return nil
}

// debugInfo is the JSON of a debug-info link, as Nix writes it.
type debugInfo struct {
	Archive string `json:"archive"`
	Member  string `json:"member"`
}

func validateDebugInfo(data []byte) error {
	var d debugInfo
	if err := decodeStrict(data, &d); err != nil {
		return fault.Invalid("debug info: not the JSON of a debug-info link: %v", err)
	}
	if !strings.HasPrefix(d.Archive, "../nar/") || strings.Contains(d.Archive[len("../nar/"):], "/") {
		return fault.Invalid("debug info: archive %q is not ../nar/<file>", trunc(d.Archive))
	}
	if d.Member == "" || strings.HasPrefix(d.Member, "/") || strings.Contains("/"+d.Member+"/", "/../") {
		return fault.Invalid("debug info: member %q is not a relative path inside the archive", trunc(d.Member))
	}
	return nil
}

// Listing is a NAR listing, as Nix writes it (nar-accessor.cc listNar).
type Listing struct {
	Version int   `json:"version"`
	Root    *Node `json:"root"`
}

// Node is one node of a listing.
type Node struct {
	Type       string           `json:"type"`
	Size       *uint64          `json:"size,omitempty"`
	Executable bool             `json:"executable,omitempty"`
	NarOffset  *uint64          `json:"narOffset,omitempty"`
	Target     *string          `json:"target,omitempty"`
	Entries    map[string]*Node `json:"entries,omitempty"`
}

// MarshalJSON writes a directory's entries even when there are none, as
// Nix does.
func (n *Node) MarshalJSON() ([]byte, error) {
	type plain Node
	if n.Type != "directory" || len(n.Entries) > 0 {
		return json.Marshal((*plain)(n))
	}
	return json.Marshal(struct {
		Type    string   `json:"type"`
		Entries struct{} `json:"entries"`
	}{Type: n.Type})
}

// ValidateListing checks that data is a version 1 NAR listing.
func ValidateListing(data []byte) error {
	var l Listing
	if err := decodeStrict(data, &l); err != nil {
		return fault.Invalid("listing: not the JSON of a NAR listing: %v", err)
	}
	if l.Version != 1 {
		return fault.Invalid("listing: version %d, want 1", l.Version)
	}
	if l.Root == nil {
		return fault.Invalid("listing: no root")
	}
	return checkNode(l.Root, "/", 0)
}

func checkNode(n *Node, path string, depth int) error {
	if n == nil {
		return fault.Invalid("listing: %s is null", path)
	}
	if depth > maxListingDepth {
		return fault.Invalid("listing: directories nest deeper than %d", maxListingDepth)
	}
	switch n.Type {
	case "regular":
		if n.Size == nil || n.Target != nil || n.Entries != nil {
			return fault.Invalid("listing: regular file %s needs a size and nothing else", trunc(path))
		}
	case "symlink":
		if n.Target == nil || *n.Target == "" || n.Size != nil || n.Entries != nil || n.Executable {
			return fault.Invalid("listing: symlink %s needs a target and nothing else", trunc(path))
		}
	case "directory":
		if n.Size != nil || n.Target != nil || n.Executable || n.NarOffset != nil {
			return fault.Invalid("listing: directory %s has file fields", trunc(path))
		}
		for name, child := range n.Entries {
			if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
				return fault.Invalid("listing: bad entry name %q in %s", trunc(name), trunc(path))
			}
			if err := checkNode(child, strings.TrimSuffix(path, "/")+"/"+name, depth+1); err != nil {
				return err
			}
		}
	default:
		return fault.Invalid("listing: %s has type %q", trunc(path), trunc(n.Type))
	}
	return nil
}

// trunc shortens what a client sent for an error message.
func trunc(s string) string {
	const max = 100
	if len(s) > max {
		return s[:max] + "..."
	}
	return s
}
