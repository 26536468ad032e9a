package auth

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"unicode"
)

// maxLineLen bounds one line of a token file.
const maxLineLen = 4096

// Tokens is the set of tokens an operator listed in a token file. Only a
// SHA-256 digest of each token is kept; tokens are compared in constant
// time.
type Tokens struct {
	entries []entry
}

type entry struct {
	name   string
	scopes Scope
	digest [sha256.Size]byte
}

// LoadPolicy loads the policy of a service's -auth-file and
// -public-read: the token file at path ("" for none), whose tokens it
// returns too (nil without a file) for the service to add its others to,
// and whether reads are public. It logs what it loaded.
func LoadPolicy(path string, publicRead bool, log *slog.Logger) (Policy, *Tokens, error) {
	p := Policy{PublicRead: publicRead}
	if path == "" {
		return p, nil, nil
	}
	tokens, err := LoadTokens(path)
	if err != nil {
		return Policy{}, nil, fmt.Errorf("auth file: %w", err)
	}
	p.Tokens = tokens
	log.Info("tokens loaded", "file", path, "tokens", tokens, "public_read", publicRead)
	return p, tokens, nil
}

// LoadTokens reads a token file; see ParseTokens for its format.
func LoadTokens(path string) (*Tokens, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err // names the path
	}
	defer f.Close()
	return ParseTokens(f, path)
}

// ParseTokens reads a token file: one token a line, as
//
//	<name> <scopes> <token>
//
// where scopes is a comma-separated list of read, push and admin. Blank
// lines and lines starting with '#' are ignored. Names and tokens must be
// unique. source names the file in errors; errors name the line, never the
// token.
func ParseTokens(r io.Reader, source string) (*Tokens, error) {
	t := &Tokens{}
	names := map[string]int{}
	digests := map[[sha256.Size]byte]int{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 512), maxLineLen)
	lineNo := 0
	for sc.Scan() {
		lineNo++
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) != 3 {
			return nil, fmt.Errorf("%s line %d: want \"<name> <scopes> <token>\" (3 fields), got %d fields", source, lineNo, len(fields))
		}
		name, scopeList, token := fields[0], fields[1], fields[2]
		if !printable(name) {
			return nil, fmt.Errorf("%s line %d: name contains a non-printable character", source, lineNo)
		}
		scopes, err := ParseScopes(scopeList)
		if err != nil {
			return nil, fmt.Errorf("%s line %d (%s): %w", source, lineNo, name, err)
		}
		if prev, ok := names[name]; ok {
			return nil, fmt.Errorf("%s line %d: name %q already used on line %d", source, lineNo, name, prev)
		}
		digest := sha256.Sum256([]byte(token))
		if prev, ok := digests[digest]; ok {
			return nil, fmt.Errorf("%s line %d (%s): same token as line %d", source, lineNo, name, prev)
		}
		names[name] = lineNo
		digests[digest] = lineNo
		t.entries = append(t.entries, entry{name: name, scopes: scopes, digest: digest})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s line %d: %w", source, lineNo+1, err)
	}
	return t, nil
}

// Len returns the number of tokens.
func (t *Tokens) Len() int {
	if t == nil {
		return 0
	}
	return len(t.entries)
}

// Lookup returns the identity token belongs to. It takes the same time
// whichever entry matches, or none.
func (t *Tokens) Lookup(token string) (Identity, bool) {
	return t.LookupDigest(sha256.Sum256([]byte(token)))
}

// LookupDigest is Lookup of the token whose SHA-256 digest is digest.
func (t *Tokens) LookupDigest(digest [sha256.Size]byte) (Identity, bool) {
	if t == nil {
		return Identity{}, false
	}
	match := -1
	for i := range t.entries {
		eq := subtle.ConstantTimeCompare(digest[:], t.entries[i].digest[:])
		match = subtle.ConstantTimeSelect(eq, i, match)
	}
	if match < 0 {
		return Identity{}, false
	}
	e := t.entries[match]
	return Identity{Name: e.name, Scopes: e.scopes}, true
}

// Authenticate implements Authenticator: an unknown token is an
// ErrUnauthenticated error.
func (t *Tokens) Authenticate(_ context.Context, token string) (Identity, error) {
	id, ok := t.Lookup(token)
	if !ok {
		return Identity{}, Unauthenticated("invalid token")
	}
	return id, nil
}

// Names returns the tokens' names and scopes, in the file's order.
func (t *Tokens) Names() []Identity {
	if t == nil {
		return nil
	}
	ids := make([]Identity, len(t.entries))
	for i, e := range t.entries {
		ids[i] = Identity{Name: e.name, Scopes: e.scopes}
	}
	return ids
}

// LogValue logs how many tokens there are, nothing else.
func (t *Tokens) LogValue() slog.Value {
	return slog.GroupValue(slog.Int("count", t.Len()))
}

func printable(s string) bool {
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}
