package storepath_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nixcache/nixcache/nix/nixtest"
	"github.com/nixcache/nixcache/nix/storepath"
)

const hash = "0mdqa9w1p6cmli6976v4wi0sw9r4p5pr"

func TestParseBase(t *testing.T) {
	tests := []struct {
		base    string
		wantErr string // "" when valid
	}{
		{hash + "-hello-2.12.1", ""},
		{hash + "-a", ""},
		{hash + "-A+-._?=z09", ""},
		{hash + "-" + strings.Repeat("x", 211), ""},
		{hash + "-source.drv", ""},
		{hash + "-..foo", ""}, // Nix 2.8 allows a leading '.'
		{hash + "-" + strings.Repeat("x", 212), "longer than 211"},
		{hash + "-", "too short"},
		{hash, "too short"},
		{"", "too short"},
		{hash + "_name", "no '-' after"},
		{hash[:31] + "-name", "no '-' after"},
		{"e" + hash[1:] + "-name", "not nix32"},
		{"O" + hash[1:] + "-name", "not nix32"},
		{strings.ToUpper(hash) + "-name", "not nix32"},
		{hash + "-.", ""},       // Nix 2.8 allows a leading '.'
		{hash + "-..", ""},      // Nix 2.8 allows a leading '.'
		{hash + "-.hidden", ""}, // Nix 2.8 allows a leading '.'
		{hash + "-a b", "illegal character ' '"},
		{hash + "-a/b", "illegal character '/'"},
		{hash + "-a\x00", "illegal character '\\x00'"},
		{hash + "-a\n", "illegal character '\\n'"},
		{hash + "-a:b", "illegal character ':'"},
		{hash + "-é", "illegal character"},
		{hash + "-a*", "illegal character '*'"},
		{hash + "-a~", "illegal character '~'"},
	}
	for _, tt := range tests {
		t.Run(tt.base, func(t *testing.T) {
			p, err := storepath.ParseBase(tt.base)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("ParseBase(%q): %v", tt.base, err)
				}
				if p.Base() != tt.base || p.HashPart != hash || p.Name != tt.base[33:] {
					t.Fatalf("ParseBase(%q) = %+v", tt.base, p)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("ParseBase(%q) = %+v, %v; want error containing %q", tt.base, p, err, tt.wantErr)
			}
		})
	}
}

func TestParse(t *testing.T) {
	base := hash + "-hello"
	tests := []struct {
		storeDir, abs string
		wantErr       string
	}{
		{"/nix/store", "/nix/store/" + base, ""},
		{"/gnu/store", "/gnu/store/" + base, ""},
		{"/nix/store", "/gnu/store/" + base, "not in the store"},
		{"/nix/store", "nix/store/" + base, "not in the store"},
		{"/nix/store", "/nix/store" + base, "not in the store"},
		{"/nix/store", "/nix/store//" + base, "not directly inside"},
		{"/nix/store", "/nix/store/" + base + "/bin/hello", "not directly inside"},
		{"/nix/store", "/nix/store/" + base + "/", "not directly inside"},
		{"/nix/store", "/nix/store/../store/" + base, "not directly inside"},
		{"/nix/store", "/nix/store/./" + base, "not directly inside"},
		{"/nix/store", "/nix/store/..", "too short"},
		{"/nix/store", "/nix/store/", "too short"},
		{"/nix/store/", "/nix/store//" + base, "not clean"},
		{"nix/store", "nix/store/" + base, "not absolute"},
		{"/", "/" + base, `"/" is not allowed`},
		{"", "/" + base, "not absolute"},
		{"/nix/../store", "/store/" + base, "not clean"},
	}
	for _, tt := range tests {
		t.Run(tt.abs, func(t *testing.T) {
			p, err := storepath.Parse(tt.storeDir, tt.abs)
			if tt.wantErr == "" {
				if err != nil || p.Absolute(tt.storeDir) != tt.abs {
					t.Fatalf("Parse(%q, %q) = %+v, %v", tt.storeDir, tt.abs, p, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Parse(%q, %q) = %+v, %v; want error containing %q", tt.storeDir, tt.abs, p, err, tt.wantErr)
			}
		})
	}
}

func TestValidateHashPart(t *testing.T) {
	for s, ok := range map[string]bool{
		hash:                  true,
		hash[:31]:             false,
		hash + "0":            false,
		"t" + hash[1:]:        false,
		"u" + hash[1:]:        false,
		"-" + hash[1:]:        false,
		"":                    false,
		"\x00" + hash[1:]:     false,
		"z" + hash[1:]:        true,
		"00000000" + hash[8:]: true,
	} {
		if err := storepath.ValidateHashPart(s); (err == nil) != ok {
			t.Errorf("ValidateHashPart(%q) = %v, want ok=%v", s, err, ok)
		}
	}
}

// TestNamesAsNix adds files of various names to a real store and checks
// that Nix accepts the names we accept and refuses the ones we refuse.
func TestNamesAsNix(t *testing.T) {
	store := nixtest.NewStore(t)
	dir := t.TempDir()
	tests := []struct {
		name      string
		nixAccept bool
	}{
		{"hello-1.0", true},
		{"A+-._?=z09", true},
		{strings.Repeat("x", 211), true},
		{strings.Repeat("x", 212), false},
		{"a b", false},
		{"a:b", false},
		{"a~", false},
		{"a*", false},
		{"é", false},
		{"a\x01", false},
		{".hidden", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sub := filepath.Join(dir, strings.ReplaceAll(t.Name(), "/", "_"))
			if err := os.Mkdir(sub, 0o755); err != nil {
				t.Fatal(err)
			}
			file := filepath.Join(sub, tt.name)
			if err := os.WriteFile(file, []byte("x"), 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := nixtest.Try(t, nil, "nix-store", "--store", store.Root, "--add", file)
			if (err == nil) != tt.nixAccept {
				t.Fatalf("nix-store --add %q: %v; expected nix to accept: %v", tt.name, err, tt.nixAccept)
			}
			ourErr := storepath.ValidateName(tt.name)
			wantOurs := tt.nixAccept
			if (ourErr == nil) != wantOurs {
				t.Fatalf("ValidateName(%q) = %v, want ok=%v", tt.name, ourErr, wantOurs)
			}
			if err == nil && wantOurs {
				p, err := storepath.Parse(storepath.DefaultStoreDir, strings.TrimSpace(out))
				if err != nil || p.Name != tt.name {
					t.Fatalf("Parse(%q) = %+v, %v", out, p, err)
				}
			}
		})
	}
}

func TestValidateStoreDir(t *testing.T) {
	for dir, ok := range map[string]bool{
		"/nix/store":   true,
		"/a":           true,
		"/":            false,
		"":             false,
		"nix/store":    false,
		"/nix/store/":  false,
		"/nix//store":  false,
		"/nix/./store": false,
		"/nix/\x00":    false,
		"/nix/\n":      false,
	} {
		if err := storepath.ValidateStoreDir(dir); (err == nil) != ok {
			t.Errorf("ValidateStoreDir(%q) = %v, want ok=%v", dir, err, ok)
		}
	}
}

func FuzzParseBase(f *testing.F) {
	for _, s := range []string{hash + "-hello", hash + "-.x", hash + "-", "", hash + "-a/b", hash + "-" + strings.Repeat("y", 211)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, base string) {
		p, err := storepath.ParseBase(base)
		if err != nil {
			return
		}
		if p.Base() != base {
			t.Fatalf("ParseBase(%q).Base() = %q", base, p.Base())
		}
		if storepath.ValidateHashPart(p.HashPart) != nil || storepath.ValidateName(p.Name) != nil {
			t.Fatalf("ParseBase(%q) = %+v, whose parts do not validate", base, p)
		}
		if strings.ContainsAny(base, "/\x00\n ") {
			t.Fatalf("ParseBase accepted %q", base)
		}
		abs := p.Absolute(storepath.DefaultStoreDir)
		if q, err := storepath.Parse(storepath.DefaultStoreDir, abs); err != nil || q != p {
			t.Fatalf("Parse(%q) = %+v, %v; want %+v", abs, q, err, p)
		}
	})
}
