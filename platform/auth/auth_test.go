package auth

import (
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"strings"
	"testing"
)

func TestAuthorize(t *testing.T) {
	tokens, err := ParseTokens(strings.NewReader("ci read,push pushtok\nlaptop read readtok\nbot push pushonly\nops admin admintok\n"), "t")
	if err != nil {
		t.Fatal(err)
	}
	basic := func(user, pass string) string {
		r, _ := http.NewRequest("GET", "/", nil)
		r.SetBasicAuth(user, pass)
		return r.Header.Get("Authorization")
	}
	tests := []struct {
		name   string
		policy Policy
		authz  string
		need   Scope
		want   error // nil, ErrUnauthenticated or ErrForbidden
		who    string
	}{
		{"public read, anonymous", Policy{Tokens: tokens, PublicRead: true}, "", Read, nil, ""},
		{"public read, bad token", Policy{Tokens: tokens, PublicRead: true}, "Bearer nope", Read, nil, ""},
		{"public read, good token", Policy{Tokens: tokens, PublicRead: true}, "Bearer readtok", Read, nil, "laptop"},
		{"private read, bad token", Policy{Tokens: tokens}, "Bearer nope", Read, ErrUnauthenticated, ""},
		{"private read, push-only token", Policy{Tokens: tokens}, "Bearer pushonly", Read, ErrForbidden, ""},
		{"private read, anonymous", Policy{Tokens: tokens}, "", Read, ErrUnauthenticated, ""},
		{"private read, token", Policy{Tokens: tokens}, "Bearer readtok", Read, nil, "laptop"},
		{"push, anonymous", Policy{Tokens: tokens, PublicRead: true}, "", Push, ErrUnauthenticated, ""},
		{"push, read token", Policy{Tokens: tokens, PublicRead: true}, "Bearer readtok", Push, ErrForbidden, ""},
		{"push, bearer", Policy{Tokens: tokens}, "Bearer pushtok", Push, nil, "ci"},
		{"push, lower-case bearer", Policy{Tokens: tokens}, "bearer pushtok", Push, nil, "ci"},
		{"push, basic", Policy{Tokens: tokens}, basic("whoever", "pushtok"), Push, nil, "ci"},
		{"push, basic token as login", Policy{Tokens: tokens}, basic("pushtok", "x"), Push, ErrUnauthenticated, ""},
		{"admin, push token", Policy{Tokens: tokens}, "Bearer pushtok", Admin, ErrForbidden, ""},
		{"push, no tokens configured", Policy{PublicRead: true}, "Bearer pushtok", Push, ErrUnauthenticated, ""},
		{"read, no tokens configured", Policy{PublicRead: true}, "", Read, nil, ""},
		{"empty bearer", Policy{Tokens: tokens}, "Bearer ", Push, ErrUnauthenticated, ""},
		{"lower-case basic", Policy{Tokens: tokens}, "basic " + base64.StdEncoding.EncodeToString([]byte("x:pushtok")), Push, nil, "ci"},
		{"basic, not base64", Policy{Tokens: tokens}, "Basic pushtok", Push, ErrUnauthenticated, ""},
		{"basic, no colon", Policy{Tokens: tokens}, "Basic " + base64.StdEncoding.EncodeToString([]byte("pushtok")), Push, ErrUnauthenticated, ""},
		{"basic, empty password", Policy{Tokens: tokens}, basic("pushtok", ""), Push, ErrUnauthenticated, ""},
		{"other scheme", Policy{Tokens: tokens}, "Digest pushtok", Push, ErrUnauthenticated, ""},
		{"admin, admin token", Policy{Tokens: tokens}, "Bearer admintok", Admin, nil, "ops"},
		{"private read, admin-only token", Policy{Tokens: tokens}, "Bearer admintok", Read, ErrForbidden, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, _ := http.NewRequest("PUT", "/x", nil)
			if tt.authz != "" {
				r.Header.Set("Authorization", tt.authz)
			}
			id, err := tt.policy.Authorize(r, tt.need)
			if tt.want == nil && err != nil || tt.want != nil && !errors.Is(err, tt.want) {
				t.Fatalf("Authorize = %v, want %v", err, tt.want)
			}
			if err != nil && strings.HasPrefix(err.Error(), "unauthenticated") {
				t.Errorf("error %q starts with its kind, not its message", err)
			}
			if id.Name != tt.who {
				t.Errorf("identity %q, want %q", id.Name, tt.who)
			}
			for _, secret := range []string{"pushtok", "readtok", "nope", "admintok"} {
				if err != nil && strings.Contains(err.Error(), secret) {
					t.Errorf("error %q shows the token", err)
				}
			}
		})
	}
}

func TestParseScopes(t *testing.T) {
	s, err := ParseScopes("push,read")
	if err != nil || s != Read|Push || s.String() != "read,push" {
		t.Errorf("ParseScopes = %v (%s), %v", s, s, err)
	}
	if _, err := ParseScopes("Push"); err == nil {
		t.Error("scope names are case-sensitive, Push was accepted")
	}
}

// downTokens cannot check any token.
type downTokens struct{}

func (downTokens) Authenticate(context.Context, string) (Identity, error) {
	return Identity{}, Unavailable("the index does not answer")
}

// TestAuthorizeUnavailable: a token that cannot be checked is never
// accepted (ErrUnavailable), except that a public read needs none.
func TestAuthorizeUnavailable(t *testing.T) {
	for _, tt := range []struct {
		public bool
		need   Scope
		want   error
	}{
		{false, Read, ErrUnavailable},
		{true, Push, ErrUnavailable},
		{true, Admin, ErrUnavailable},
		{true, Read, nil},
	} {
		p := Policy{Tokens: downTokens{}, PublicRead: tt.public}
		id, err := p.AuthorizeHeader(context.Background(), "Bearer tok", tt.need)
		if !errors.Is(err, tt.want) || tt.want == nil && err != nil || id.Name != "" {
			t.Errorf("public %v, %s, with a token that cannot be checked: %+v, %v, want %v", tt.public, tt.need, id, err, tt.want)
		}
	}
}
