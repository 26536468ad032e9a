package netrc

import "testing"

func TestParse(t *testing.T) {
	const text = `machine other.example login a password wrong
machine cache.example login nix password s3cret
macdef init
machine cache.example password frommacro

default login x password fallback
`
	tests := []struct {
		host, want string
		found      bool
	}{
		{"cache.example", "s3cret", true},
		{"other.example", "wrong", true},
		{"unknown.example", "fallback", true},
	}
	for _, tt := range tests {
		got, found := Parse(text, tt.host)
		if got != tt.want || found != tt.found {
			t.Errorf("Parse(%q) = %q, %v; want %q, %v", tt.host, got, found, tt.want, tt.found)
		}
	}
	if got, found := Parse("machine a.example password p\n", "b.example"); found {
		t.Errorf("no entry for b.example, got %q", got)
	}
	if got, found := Parse("machine a.example\n  login u\n  password multi\n", "a.example"); !found || got != "multi" {
		t.Errorf("multi-line entry: %q, %v", got, found)
	}
}
