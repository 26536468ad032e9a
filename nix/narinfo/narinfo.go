// Package narinfo reads and writes .narinfo files as the Nix client does.
package narinfo

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/nixcache/nixcache/nix/nixhash"
	"github.com/nixcache/nixcache/nix/signature"
	"github.com/nixcache/nixcache/nix/storepath"
)

// MaxSize is the largest narinfo Parse accepts, in bytes.
const MaxSize = 1 << 20

// unknownDeriver is what some writers put in Deriver for "none"; Nix reads
// it as no deriver.
const unknownDeriver = "unknown-deriver"

// NarInfo is one parsed narinfo.
type NarInfo struct {
	StorePath   string       // absolute store path
	URL         string       // relative to the cache root
	Compression string       // "" when absent (Nix then assumes bzip2); see EffectiveCompression
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
//
// Stricter than Nix, it also rejects: a repeated key other than Sig (Nix
// keeps the last), a line that is not "Key: value" (or "Key:" with an empty
// value), control characters (NUL, CR, tab...), and a last line without its
// newline (which Nix rejects too). An empty Sig line is skipped, and
// "Deriver: unknown-deriver" means no deriver, as in Nix.
func Parse(r io.Reader, storeDir string) (*NarInfo, error) {
	if err := storepath.ValidateStoreDir(storeDir); err != nil {
		return nil, fmt.Errorf("narinfo: %w", err)
	}
	data, err := io.ReadAll(io.LimitReader(r, MaxSize+1))
	if err != nil {
		return nil, fmt.Errorf("narinfo: read: %w", err)
	}
	if len(data) > MaxSize {
		return nil, fmt.Errorf("narinfo: larger than %d bytes", MaxSize)
	}
	if len(data) > 0 && data[len(data)-1] != '\n' {
		return nil, fmt.Errorf("narinfo: line %d: no newline at the end", bytes.Count(data, []byte{'\n'})+1)
	}

	p := parser{n: &NarInfo{}, storeDir: storeDir, seen: map[string]bool{}}
	for lineNo := 1; len(data) > 0; lineNo++ {
		i := bytes.IndexByte(data, '\n')
		line := string(data[:i])
		data = data[i+1:]
		// Every value ends in a protobuf string, which must be UTF-8.
		if !utf8.ValidString(line) {
			return nil, fmt.Errorf("narinfo: line %d: not valid UTF-8", lineNo)
		}
		if err := p.line(line); err != nil {
			return nil, fmt.Errorf("narinfo: line %d: %w", lineNo, err)
		}
	}
	n := p.n
	for _, key := range []string{"StorePath", "URL", "NarHash", "NarSize"} {
		if !p.seen[key] {
			return nil, fmt.Errorf("narinfo: no %s", key)
		}
	}
	switch {
	case n.URL == "":
		return nil, errors.New("narinfo: empty URL")
	case n.NarSize == 0:
		return nil, errors.New("narinfo: NarSize is 0")
	}
	return n, nil
}

// parser holds the state of one Parse.
type parser struct {
	n        *NarInfo
	storeDir string
	seen     map[string]bool // known keys met so far
}

// line parses one line, without its newline.
func (p *parser) line(line string) error {
	if i := strings.IndexFunc(line, isControl); i >= 0 {
		return fmt.Errorf("control character %q", line[i])
	}
	key, value, ok := strings.Cut(line, ":")
	switch {
	case !ok:
		return fmt.Errorf("%s: not a \"Key: value\" line", clip(line))
	case key == "" || strings.Contains(key, " "):
		return fmt.Errorf("%s: bad key %s", clip(line), clip(key))
	case value != "" && value[0] != ' ':
		return fmt.Errorf("%s: no space after ':'", clip(line))
	}
	value = strings.TrimPrefix(value, " ")
	n := p.n

	switch key {
	case "StorePath", "URL", "Compression", "FileHash", "FileSize", "NarHash", "NarSize", "References", "Deriver", "CA":
		if p.seen[key] {
			return fmt.Errorf("%s repeated", key)
		}
		p.seen[key] = true
	}

	var err error
	switch key {
	case "StorePath":
		if _, err := storepath.Parse(p.storeDir, value); err != nil {
			return fmt.Errorf("StorePath: %w", err)
		}
		n.StorePath = value
	case "URL":
		n.URL = value
	case "Compression":
		n.Compression = value
	case "FileHash":
		if n.FileHash, err = nixhash.Parse(value); err != nil {
			return fmt.Errorf("FileHash: %w", err)
		}
	case "FileSize":
		if n.FileSize, err = parseSize(value); err != nil {
			return fmt.Errorf("FileSize %s: %w", clip(value), err)
		}
	case "NarHash":
		if n.NarHash, err = nixhash.Parse(value); err != nil {
			return fmt.Errorf("NarHash: %w", err)
		}
	case "NarSize":
		if n.NarSize, err = parseSize(value); err != nil {
			return fmt.Errorf("NarSize %s: %w", clip(value), err)
		}
	case "References":
		n.References = []string{}
		for _, ref := range strings.Fields(value) {
			if _, err := storepath.ParseBase(ref); err != nil {
				return fmt.Errorf("References: %w", err) //nolint:staticcheck // ST1005: the field's name
			}
			n.References = append(n.References, ref)
		}
	case "Deriver":
		if value == unknownDeriver {
			break
		}
		if _, err := storepath.ParseBase(value); err != nil {
			return fmt.Errorf("Deriver: %w", err) //nolint:staticcheck // ST1005: the field's name
		}
		n.Deriver = value
	case "Sig":
		if value != "" {
			n.Sigs = append(n.Sigs, value)
		}
	case "CA":
		if err := checkCA(value); err != nil {
			return fmt.Errorf("CA %s: %w", clip(value), err)
		}
		n.CA = value
	}
	return nil
}

// isControl reports ASCII control characters, which no narinfo holds.
func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

// parseSize parses a decimal uint64.
func parseSize(s string) (uint64, error) {
	if s == "" || strings.Trim(s, "0123456789") != "" {
		return 0, errors.New("not a number")
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, errors.New("out of range")
	}
	return n, nil
}

// checkCA validates a content address as Nix parses it:
// "text:sha256:<hash>" or "fixed:[r:]<algo>:<hash>"; "" means none.
func checkCA(ca string) error {
	if ca == "" {
		return nil
	}
	method, rest, ok := strings.Cut(ca, ":")
	if !ok {
		return errors.New("not <method>:<hash>")
	}
	switch method {
	case "text":
	case "fixed":
		rest = strings.TrimPrefix(rest, "r:")
	default:
		return fmt.Errorf("unknown method %s (want text or fixed)", clip(method))
	}
	algoName, digest, ok := strings.Cut(rest, ":")
	if !ok {
		return errors.New("hash is not <algo>:<hash>")
	}
	algo, err := nixhash.ParseAlgorithm(algoName)
	if err != nil {
		return err
	}
	if method == "text" && algo != nixhash.SHA256 {
		return fmt.Errorf("text hash is %s, want sha256", algo)
	}
	if strings.ContainsAny(digest, ":-") {
		return errors.New("hash must be untyped")
	}
	_, err = nixhash.ParseAs(algo, digest)
	return err
}

// EffectiveCompression returns Compression, or "bzip2" when it is empty.
func (n *NarInfo) EffectiveCompression() string {
	if n.Compression == "" {
		return "bzip2"
	}
	return n.Compression
}

// String renders the narinfo in the key order Nix writes, hashes as
// "sha256:<nix32>", with the References line always present and optional
// keys only when set.
//
// Compression is always written, as Nix does: EffectiveCompression. The
// References line of a path without references is "References: " (with
// its space), byte for byte what Nix writes.
func (n *NarInfo) String() string {
	var b strings.Builder
	line := func(key, value string) {
		b.WriteString(key)
		b.WriteString(": ")
		b.WriteString(value)
		b.WriteByte('\n')
	}
	line("StorePath", n.StorePath)
	line("URL", n.URL)
	line("Compression", n.EffectiveCompression())
	if !n.FileHash.IsZero() {
		line("FileHash", n.FileHash.String())
	}
	if n.FileSize != 0 {
		line("FileSize", strconv.FormatUint(n.FileSize, 10))
	}
	line("NarHash", n.NarHash.String())
	line("NarSize", strconv.FormatUint(n.NarSize, 10))
	line("References", strings.Join(n.References, " "))
	if n.Deriver != "" {
		line("Deriver", n.Deriver)
	}
	for _, sig := range n.Sigs {
		line("Sig", sig)
	}
	if n.CA != "" {
		line("CA", n.CA)
	}
	return b.String()
}

// Fingerprint returns the fingerprint Nix signs for this narinfo (see
// signature.Fingerprint).
func (n *NarInfo) Fingerprint(storeDir string) (string, error) {
	if _, err := storepath.Parse(storeDir, n.StorePath); err != nil {
		return "", fmt.Errorf("narinfo fingerprint: %w", err)
	}
	if n.NarHash.Algo != nixhash.SHA256 || len(n.NarHash.Digest) != nixhash.SHA256.Size() {
		return "", fmt.Errorf("narinfo fingerprint of %s: NarHash is not a sha256 hash", n.StorePath)
	}
	if n.NarSize == 0 {
		return "", fmt.Errorf("narinfo fingerprint of %s: NarSize is 0", n.StorePath)
	}
	for _, ref := range n.References {
		if _, err := storepath.ParseBase(ref); err != nil {
			return "", fmt.Errorf("narinfo fingerprint of %s: reference: %w", n.StorePath, err)
		}
	}
	return signature.Fingerprint(storeDir, n.StorePath, n.NarHash, n.NarSize, n.References), nil
}

// clip quotes s for an error message, cut short when it is long.
func clip(s string) string {
	const max = 128
	if len(s) > max {
		return fmt.Sprintf("%q...", s[:max])
	}
	return fmt.Sprintf("%q", s)
}
