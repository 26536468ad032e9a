// Package drv reads the output paths of a store derivation (.drv), which
// is written in ATerm: Derive([("out","/nix/store/...","",""),...],...).
// Nix 2.8 runs a post-build-hook with an empty $OUT_PATHS; the hook then
// reads the outputs from $DRV_PATH.
package drv

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// maxOutputsText bounds what is read of a .drv: its outputs come first.
const maxOutputsText = 1 << 20

// Outputs returns the output paths the derivation at path names, in its
// order; content-addressed outputs, whose paths are not known before the
// build, are left out.
func Outputs(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read derivation: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxOutputsText))
	if err != nil {
		return nil, fmt.Errorf("read derivation %s: %w", path, err)
	}
	outs, err := ParseOutputs(string(b))
	if err != nil {
		return nil, fmt.Errorf("derivation %s: %w", path, err)
	}
	return outs, nil
}

// ParseOutputs returns the output paths of the derivation text s.
func ParseOutputs(s string) ([]string, error) {
	p := &parser{s: s}
	if !p.lit("Derive([") {
		return nil, errors.New(`not a derivation (want "Derive([" at the start)`)
	}
	var outs []string
	for !p.lit("]") {
		if len(outs) > 0 && !p.lit(",") {
			return nil, p.fail(`"," or "]"`)
		}
		if !p.lit("(") {
			return nil, p.fail(`"("`)
		}
		var fields [4]string
		for i := range fields {
			if i > 0 && !p.lit(",") {
				return nil, p.fail(`","`)
			}
			str, err := p.str()
			if err != nil {
				return nil, err
			}
			fields[i] = str
		}
		if !p.lit(")") {
			return nil, p.fail(`")"`)
		}
		if fields[1] != "" {
			outs = append(outs, fields[1])
		}
	}
	return outs, nil
}

type parser struct {
	s   string
	off int
}

func (p *parser) lit(want string) bool {
	if strings.HasPrefix(p.s[p.off:], want) {
		p.off += len(want)
		return true
	}
	return false
}

func (p *parser) fail(want string) error {
	return fmt.Errorf("malformed outputs at byte %d: want %s", p.off, want)
}

// str reads a quoted string with ATerm's escapes.
func (p *parser) str() (string, error) {
	if !p.lit(`"`) {
		return "", p.fail(`a string`)
	}
	var b strings.Builder
	for p.off < len(p.s) {
		c := p.s[p.off]
		p.off++
		switch c {
		case '"':
			return b.String(), nil
		case '\\':
			if p.off >= len(p.s) {
				return "", p.fail("an escaped character")
			}
			e := p.s[p.off]
			p.off++
			switch e {
			case 'n':
				b.WriteByte('\n')
			case 'r':
				b.WriteByte('\r')
			case 't':
				b.WriteByte('\t')
			default:
				b.WriteByte(e)
			}
		default:
			b.WriteByte(c)
		}
	}
	return "", p.fail(`the string's closing quote`)
}
