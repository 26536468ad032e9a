// Package auth decides whether a request may read from, push to or
// administer the cache, the same way over HTTP and gRPC. Credentials are
// tokens: listed in a file the operator edits (see ParseTokens), or made
// at run time and kept by the index (an Authenticator asks it). A client
// sends one as "Authorization: Bearer <token>" (HTTP header or gRPC
// metadata), or as the password of HTTP Basic auth (what Nix sends from its
// netrc file; the login is ignored).
//
// Tokens are kept only as SHA-256 digests, compared in constant time, and
// never appear in an error or a log line.
package auth

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"path"
	"strings"
)

// Errors Authorize returns; match them with errors.Is. ErrUnauthenticated
// means the request must (re)try with valid credentials (HTTP 401, gRPC
// Unauthenticated), ErrForbidden that the credentials are valid but
// insufficient (HTTP 403, gRPC PermissionDenied).
// ErrUnavailable means the credentials could not be checked (the index
// that keeps the tokens is down): HTTP 503, gRPC Unavailable. A token
// that cannot be checked is never accepted.
var (
	ErrUnauthenticated = errors.New("unauthenticated")
	ErrForbidden       = errors.New("forbidden")
	ErrUnavailable     = errors.New("unavailable")
)

// Identity is who a request authenticated as.
type Identity struct {
	Name   string // the token's name; "" when anonymous
	Scopes Scope
	// PushPattern, when set, is a glob (path.Match) that the name of every
	// store path the token publishes must match.
	PushPattern string
}

// MayPublish reports whether the identity may publish the store path
// whose name (after "<hash>-") is name.
func (id Identity) MayPublish(name string) bool {
	if id.PushPattern == "" {
		return true
	}
	ok, err := path.Match(id.PushPattern, name)
	return ok && err == nil
}

// Authenticator says which token a secret is.
type Authenticator interface {
	// Authenticate returns the identity of the token whose secret is
	// secret. An unknown, revoked or expired token is an error of kind
	// ErrUnauthenticated; one of kind ErrUnavailable means that it could
	// not be checked. Errors never show the secret.
	Authenticate(ctx context.Context, secret string) (Identity, error)
}

// Unauthenticated returns an error of kind ErrUnauthenticated with msg
// for the client, for Authenticators.
func Unauthenticated(msg string) error { return &authError{ErrUnauthenticated, msg} }

// Unavailable returns an error of kind ErrUnavailable with msg for the
// client, for Authenticators.
func Unavailable(msg string) error { return &authError{ErrUnavailable, msg} }

// Policy says which requests need which credentials.
type Policy struct {
	// Tokens are the accepted tokens; nil when none are configured, which
	// disables every scope that needs one.
	Tokens Authenticator
	// PublicRead lets requests without credentials read.
	PublicRead bool
}

// Authorize checks that r may act with scope need, and returns who it is.
// See AuthorizeHeader.
func (p Policy) Authorize(r *http.Request, need Scope) (Identity, error) {
	return p.AuthorizeHeader(r.Context(), r.Header.Get("Authorization"), need)
}

// AuthorizeHeader checks that a request carrying the Authorization value
// header ("" when it has none) may act with scope need, and returns who it
// is. When reads are public, a read needs no credentials and any sent are
// not held against it (a stale token in a netrc file must not break a
// public cache), nor when they cannot be checked (ErrUnavailable): a
// public read needs nothing a token gives.
func (p Policy) AuthorizeHeader(ctx context.Context, header string, need Scope) (Identity, error) {
	if need == Read && p.PublicRead && header == "" {
		// The common case of a public cache, answered without building
		// the error authenticate would return only to be dropped.
		return Identity{}, nil
	}
	id, err := p.authenticate(ctx, header, need)
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

// authenticate returns the identity the credentials in header belong to.
func (p Policy) authenticate(ctx context.Context, header string, need Scope) (Identity, error) {
	if p.Tokens == nil {
		return Identity{}, &authError{ErrUnauthenticated, fmt.Sprintf("%s is disabled: no credentials are configured (-auth-file)", need)}
	}
	token, sent, err := ParseAuthorization(header)
	switch {
	case err != nil:
		return Identity{}, err
	case !sent:
		return Identity{}, &authError{ErrUnauthenticated, fmt.Sprintf(
			"%s requires a token: send it as a Bearer token or as the password of HTTP Basic auth (a netrc entry)", need)}
	}
	return p.Tokens.Authenticate(ctx, token)
}

// authError is an error of kind ErrUnauthenticated or ErrForbidden with a
// message for the client.
type authError struct {
	kind error
	msg  string
}

func (e *authError) Error() string        { return e.msg }
func (e *authError) Is(target error) bool { return target == e.kind }

// ParseAuthorization returns the token an Authorization value carries: the
// password of HTTP Basic auth, or a Bearer token (both schemes
// case-insensitive). sent is false when header is empty; another or a
// malformed scheme is an ErrUnauthenticated error, which never shows the
// value.
func ParseAuthorization(header string) (token string, sent bool, err error) {
	if header == "" {
		return "", false, nil
	}
	scheme, rest, _ := strings.Cut(header, " ")
	rest = strings.TrimSpace(rest)
	switch {
	case strings.EqualFold(scheme, "Bearer"):
		if rest == "" {
			return "", true, &authError{ErrUnauthenticated, "empty Bearer token"}
		}
		return rest, true, nil
	case strings.EqualFold(scheme, "Basic"):
		decoded, err := base64.StdEncoding.DecodeString(rest)
		if err != nil {
			return "", true, &authError{ErrUnauthenticated, "malformed HTTP Basic credentials (not base64)"}
		}
		_, password, ok := strings.Cut(string(decoded), ":")
		switch {
		case !ok:
			return "", true, &authError{ErrUnauthenticated, `malformed HTTP Basic credentials (want "login:password")`}
		case password == "":
			return "", true, &authError{ErrUnauthenticated, "HTTP Basic credentials with an empty password (the password is the token)"}
		}
		return password, true, nil
	default:
		return "", true, &authError{ErrUnauthenticated, "unsupported Authorization scheme (want Basic or Bearer)"}
	}
}

type identityKey struct{}

// WithIdentity returns ctx carrying id, as the gRPC interceptors do for the
// handlers they let through.
func WithIdentity(ctx context.Context, id Identity) context.Context {
	return context.WithValue(ctx, identityKey{}, id)
}

// IdentityFrom returns the identity ctx carries; ok is false when no check
// was made (a method without a rule), and the identity is anonymous
// (Name "") when reads are public and no valid token was sent.
func IdentityFrom(ctx context.Context) (id Identity, ok bool) {
	id, ok = ctx.Value(identityKey{}).(Identity)
	return id, ok
}
