package auth

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseTokens(t *testing.T) {
	const file = `# nixcache tokens
ci      read,push        secret-ci

# a reader
laptop  read             secret-laptop
ops     admin,push,read  secret-ops
`
	tokens, err := ParseTokens(strings.NewReader(file), "tokens")
	if err != nil {
		t.Fatal(err)
	}
	if tokens.Len() != 3 {
		t.Fatalf("%d tokens, want 3", tokens.Len())
	}
	tests := []struct {
		token  string
		name   string
		scopes Scope
		ok     bool
	}{
		{"secret-ci", "ci", Read | Push, true},
		{"secret-laptop", "laptop", Read, true},
		{"secret-ops", "ops", Read | Push | Admin, true},
		{"secret-c", "", 0, false},
		{"", "", 0, false},
		{"ci", "", 0, false},
	}
	for _, tt := range tests {
		id, ok := tokens.Lookup(tt.token)
		if ok != tt.ok || id.Name != tt.name || id.Scopes != tt.scopes {
			t.Errorf("Lookup(%q) = %+v, %v; want %s %s %v", tt.token, id, ok, tt.name, tt.scopes, tt.ok)
		}
	}
}

func TestParseTokensRejects(t *testing.T) {
	tests := []struct {
		name string
		file string
		want string // substring of the error
	}{
		{"two fields", "ci push\n", "line 1: want"},
		{"four fields", "\n\nci push secret extra\n", "line 3: want"},
		{"unknown scope", "ci read,write secret\n", `line 1 (ci): unknown scope "write"`},
		{"empty scope", "ci read,,push secret\n", `unknown scope ""`},
		{"duplicate name", "ci read a\nci push b\n", `line 2: name "ci" already used on line 1`},
		{"duplicate token", "ci read same-secret\nops push same-secret\n", "line 2 (ops): same token as line 1"},
		{"long line", "ci read " + strings.Repeat("x", 5000) + "\n", "line 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseTokens(strings.NewReader(tt.file), "tokens.txt")
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), "tokens.txt ") {
				t.Fatalf("error %v, want one containing %q", err, tt.want)
			}
			for _, secret := range []string{"same-secret", "secret extra", strings.Repeat("x", 20)} {
				if strings.Contains(err.Error(), secret) {
					t.Errorf("error %q shows the token", err)
				}
			}
		})
	}
}

func TestLoadTokens(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(path, []byte("ci push tok\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tokens, err := LoadTokens(path)
	if err != nil || tokens.Len() != 1 {
		t.Fatalf("LoadTokens = %v, %v", tokens, err)
	}
	if _, err := LoadTokens(filepath.Join(t.TempDir(), "absent")); err == nil {
		t.Error("LoadTokens of a missing file succeeded")
	}
}

func TestTokensLogValue(t *testing.T) {
	tokens, err := ParseTokens(strings.NewReader("ci push very-secret-token\n"), "t")
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	slog.New(slog.NewTextHandler(&buf, nil)).Info("loaded", "tokens", tokens)
	for _, s := range []string{fmt.Sprint(tokens), fmt.Sprintf("%+v", tokens), buf.String()} {
		if strings.Contains(s, "very-secret-token") {
			t.Errorf("%q shows the token", s)
		}
	}
}

func TestLoadPolicy(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "auth")
	if err := os.WriteFile(file, []byte("ci push,read secret-ci\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	p, tokens, err := LoadPolicy(file, false, log)
	if err != nil {
		t.Fatal(err)
	}
	if p.PublicRead || tokens == nil || p.Tokens != Authenticator(tokens) {
		t.Fatalf("policy %+v, tokens %v: want private reads and the file's tokens", p, tokens)
	}
	if id, ok := tokens.Lookup("secret-ci"); !ok || id.Name != "ci" || id.Scopes != Push|Read {
		t.Errorf("the file's token: %+v, %v", id, ok)
	}
	if !strings.Contains(logs.String(), "tokens loaded") || strings.Contains(logs.String(), "secret-ci") {
		t.Errorf("log %q: want \"tokens loaded\" without the token", logs.String())
	}

	// Without a file: no tokens at all, not a nil *Tokens in the
	// interface (which would not disable the scopes needing one).
	p, tokens, err = LoadPolicy("", true, log)
	if err != nil || !p.PublicRead || p.Tokens != nil || tokens != nil {
		t.Errorf("no file: policy %+v, tokens %v, %v", p, tokens, err)
	}

	if _, _, err := LoadPolicy(filepath.Join(dir, "missing"), true, log); err == nil || !strings.Contains(err.Error(), "auth file") {
		t.Errorf("missing file: %v, want an error naming the auth file", err)
	}
}
