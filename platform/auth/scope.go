package auth

import (
	"fmt"
	"strings"
)

// Scope is a set of permissions a token grants.
type Scope uint8

const (
	// Read allows fetching narinfos and NARs (when reads are private).
	Read Scope = 1 << iota
	// Push allows uploading NARs and narinfos.
	Push
	// Admin allows the admin API.
	Admin
)

var scopeNames = []struct {
	scope Scope
	name  string
}{{Read, "read"}, {Push, "push"}, {Admin, "admin"}}

// ParseScopes parses a comma-separated list of scope names.
func ParseScopes(list string) (Scope, error) {
	var s Scope
	for _, name := range strings.Split(list, ",") {
		found := false
		for _, sn := range scopeNames {
			if name == sn.name {
				s |= sn.scope
				found = true
			}
		}
		if !found {
			return 0, fmt.Errorf("unknown scope %q (want a comma-separated list of read, push, admin)", name)
		}
	}
	return s, nil
}

// Has reports whether s includes every scope of want.
func (s Scope) Has(want Scope) bool { return s&want == want }

// String returns the comma-separated scope names.
func (s Scope) String() string {
	var names []string
	for _, sn := range scopeNames {
		if s.Has(sn.scope) {
			names = append(names, sn.name)
		}
	}
	return strings.Join(names, ",")
}
