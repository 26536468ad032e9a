// Package auth decides whether an HTTP request may read from or push to the
// cache. Credentials are tokens listed in a file the operator edits (see
// ParseTokens); a client sends one as the password of HTTP Basic auth (what
// Nix sends from its netrc file; the login is ignored) or as
// "Authorization: Bearer <token>".
package auth

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
)

// Errors Authorize returns; match them with errors.Is. ErrUnauthenticated
// means the request must (re)try with valid credentials (HTTP 401),
// ErrForbidden that the credentials are valid but insufficient (HTTP 403).
var (
	ErrUnauthenticated = errors.New("unauthenticated")
	ErrForbidden       = errors.New("forbidden")
)

// Identity is who a request authenticated as.
type Identity struct {
	Name   string // the token's name in the token file; "" when anonymous
	Scopes Scope
}

// Policy says which requests need which credentials.
type Policy struct {
	// Tokens are the accepted tokens; nil when none are configured, which
	// disables every scope that needs one.
	Tokens *Tokens
	// PublicRead lets requests without credentials read.
	PublicRead bool
}

// Authorize checks that r may act with scope need, and returns who it is.
// When reads are public, a read needs no credentials and any sent are not
// held against it (a stale token in a netrc file must not break a public
// cache).
func (p Policy) Authorize(r *http.Request, need Scope) (Identity, error) {
	id, err := p.authenticate(r, need)
	if need == Read && p.PublicRead {
		return id, nil // anonymous when authentication failed
	}
	if err != nil {
		return Identity{}, err
	}
	if !id.Scopes.Has(need) {
		return Identity{}, &authError{ErrForbidden, fmt.Sprintf("token %q lacks the %s scope", id.Name, need)}
	}
	return id, nil
}

// authenticate returns the identity r's credentials belong to.
func (p Policy) authenticate(r *http.Request, need Scope) (Identity, error) {
	if p.Tokens == nil {
		return Identity{}, &authError{ErrUnauthenticated, fmt.Sprintf("%s is disabled: no credentials are configured (-auth-file)", need)}
	}
	token, sent, err := Credential(r)
	switch {
	case err != nil:
		return Identity{}, err
	case !sent:
		return Identity{}, &authError{ErrUnauthenticated, fmt.Sprintf(
			"%s requires a token: send it as the password of HTTP Basic auth (a netrc entry) or as a Bearer token", need)}
	}
	id, ok := p.Tokens.Lookup(token)
	if !ok {
		return Identity{}, &authError{ErrUnauthenticated, "invalid token"}
	}
	return id, nil
}

// authError is an error of kind ErrUnauthenticated or ErrForbidden with a
// message for the client.
type authError struct {
	kind error
	msg  string
}

func (e *authError) Error() string        { return e.msg }
func (e *authError) Is(target error) bool { return target == e.kind }

// Credential returns the token r carries: the password of HTTP Basic auth,
// or a Bearer token. sent is false when r has no Authorization header; an
// Authorization header of another or malformed scheme is an error.
func Credential(r *http.Request) (token string, sent bool, err error) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return "", false, nil
	}
	if _, password, ok := r.BasicAuth(); ok {
		if password == "" {
			return "", true, &authError{ErrUnauthenticated, "HTTP Basic credentials with an empty password (the password is the token)"}
		}
		return password, true, nil
	}
	scheme, rest, _ := strings.Cut(h, " ")
	if strings.EqualFold(scheme, "Bearer") {
		if t := strings.TrimSpace(rest); t != "" {
			return t, true, nil
		}
		return "", true, &authError{ErrUnauthenticated, "empty Bearer token"}
	}
	return "", true, &authError{ErrUnauthenticated, "unsupported Authorization scheme (want Basic or Bearer)"}
}
