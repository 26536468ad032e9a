package httpapi

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"unicode/utf8"

	"github.com/nixcache/nixcache/platform/auth"
)

// Route classes, the "route" label of the gateway's HTTP metrics.
const (
	RouteCacheInfo = "nix-cache-info"
	RouteNarinfo   = "narinfo"
	RouteNar       = "nar"
	RouteAPI       = "api"
	RouteLanding   = "landing"
	// The artifacts (artifact.go).
	RouteLog         = "log"
	RouteListing     = "listing"
	RouteRealisation = "realisation"
	RouteDebugInfo   = "debuginfo"
	RouteOther       = "other"
)

// anyone is the scope of a route the table lets through unchecked: the
// landing page, answers of 404, and the JSON admin API, whose
// credentials the index judges (package adminapi).
const anyone auth.Scope = 0

// route is one line of the route table: the methods and the path pattern
// it answers, the class of the path (its metrics label), the scope a
// caller needs, checked before the handler runs, and the handler.
type route struct {
	methods string // space-separated; "*" for any method
	pattern string // see parsePattern
	class   string
	scope   auth.Scope
	handler func(*Handler, http.ResponseWriter, *http.Request)
}

// routes is the gateway's route table. A path belongs to the first
// pattern that matches it; a method that pattern's lines do not list is
// answered 405 with an Allow header. The handlers judge what the
// patterns leave open (the hash in a narinfo URL, the name under /nar/):
// a malformed one is answered 400, not 404.
var routes = []route{
	{"GET HEAD", "/", RouteLanding, anyone, (*Handler).landing},
	{"*", "/api/v1", RouteAPI, anyone, (*Handler).admin},
	{"*", "/api/v1/{rest...}", RouteAPI, anyone, (*Handler).admin},
	{"GET HEAD", "/nix-cache-info", RouteCacheInfo, auth.Read, (*Handler).cacheInfo},
	{"PUT", "/nix-cache-info", RouteCacheInfo, auth.Push, (*Handler).putCacheInfo},
	{"GET", "/nar/{name...}", RouteNar, auth.Read, (*Handler).getNar},
	{"HEAD", "/nar/{name...}", RouteNar, auth.Read, (*Handler).headNar},
	{"PUT", "/nar/{name...}", RouteNar, auth.Push, (*Handler).putNar},
	{"GET HEAD", "/{hash}.narinfo", RouteNarinfo, auth.Read, (*Handler).getNarinfo},
	{"PUT", "/{hash}.narinfo", RouteNarinfo, auth.Push, (*Handler).putNarinfo},
	{"GET HEAD", "/log/{drv...}", RouteLog, auth.Read, (*Handler).getArtifact},
	{"PUT", "/log/{drv...}", RouteLog, auth.Push, (*Handler).putArtifact},
	{"GET HEAD", "/{hash}.ls", RouteListing, auth.Read, (*Handler).getArtifact},
	{"PUT", "/{hash}.ls", RouteListing, auth.Push, (*Handler).putArtifact},
	{"GET HEAD", "/realisations/{id...}", RouteRealisation, auth.Read, (*Handler).getArtifact},
	{"PUT", "/realisations/{id...}", RouteRealisation, auth.Push, (*Handler).putArtifact},
	{"GET HEAD", "/debuginfo/{id...}", RouteDebugInfo, auth.Read, (*Handler).getArtifact},
	{"PUT", "/debuginfo/{id...}", RouteDebugInfo, auth.Push, (*Handler).putArtifact},
	{"GET HEAD", "{path...}", RouteOther, anyone, (*Handler).notFound},
	// Authorised as every push, so that the user learns why.
	{"PUT", "{path...}", RouteOther, auth.Push, (*Handler).putUnsupported},
}

// resource is the lines of the route table that share a pattern.
type resource struct {
	pattern routePattern
	class   string
	methods map[string]*route // by method; "*" for any
	allow   string            // the Allow header of a 405
}

// resources is the route table by pattern, in the table's order.
var resources = newResources(routes)

// newResources groups the table's lines by pattern; it panics on a table
// that says two things of one method and pattern.
func newResources(table []route) []*resource {
	var out []*resource
	byPattern := map[string]*resource{}
	for i := range table {
		rt := &table[i]
		res := byPattern[rt.pattern]
		if res == nil {
			res = &resource{pattern: parsePattern(rt.pattern), class: rt.class, methods: map[string]*route{}}
			byPattern[rt.pattern] = res
			out = append(out, res)
		}
		if res.class != rt.class {
			panic(fmt.Sprintf("httpapi: route %s has classes %s and %s", rt.pattern, res.class, rt.class))
		}
		for _, m := range strings.Fields(rt.methods) {
			if res.methods[m] != nil {
				panic(fmt.Sprintf("httpapi: route %s %s is in the table twice", m, rt.pattern))
			}
			res.methods[m] = rt
		}
	}
	for _, res := range out {
		var allow []string
		for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodPut} {
			if res.methods[m] != nil {
				allow = append(allow, m)
			}
		}
		res.allow = strings.Join(allow, ", ")
	}
	return out
}

// resourceOf is the resource path p belongs to: the first that matches.
func resourceOf(p string) *resource {
	for _, res := range resources {
		if res.pattern.match(p) {
			return res
		}
	}
	return nil // the table ends with a pattern that matches anything
}

// routePattern is a parsed route pattern. Nix's URLs are not all ServeMux
// patterns ("/{hash}.narinfo" has a wildcard that is not a whole
// segment), so the table has patterns of its own, of three forms:
//
//	/nix-cache-info      the path itself
//	/nar/{name...}       the prefix, then anything (slashes too, or nothing)
//	/{hash}.narinfo      the prefix, one non-empty segment, the suffix
//
// and {path...} matches any path, "*" (OPTIONS *) too.
type routePattern struct {
	prefix, suffix string
	rest           bool // {name...}: any remainder
	segment        bool // {name}: one segment between prefix and suffix
}

// parsePattern parses a pattern of the route table; it panics on one of
// another form.
func parsePattern(s string) routePattern {
	open := strings.IndexByte(s, '{')
	if open < 0 {
		return routePattern{prefix: s}
	}
	end := strings.IndexByte(s, '}')
	if end < open || open > 0 && s[0] != '/' || strings.ContainsAny(s[end+1:], "{}/") {
		panic("httpapi: bad route pattern " + s)
	}
	p := routePattern{prefix: s[:open], suffix: s[end+1:]}
	if strings.HasSuffix(s[open:end], "...") {
		if p.suffix != "" {
			panic("httpapi: bad route pattern " + s + ": nothing may follow {name...}")
		}
		p.rest = true
		return p
	}
	p.segment = true
	return p
}

// match reports whether the URL path p matches the pattern.
func (pt routePattern) match(p string) bool {
	switch {
	case pt.rest:
		return strings.HasPrefix(p, pt.prefix)
	case pt.segment:
		mid, ok := strings.CutPrefix(p, pt.prefix)
		if !ok {
			return false
		}
		mid, ok = strings.CutSuffix(mid, pt.suffix)
		return ok && mid != "" && !strings.Contains(mid, "/")
	default:
		return p == pt.prefix
	}
}

// RouteClass names the kind of resource r asks for, from the route
// table: a small fixed set, for metrics.
func RouteClass(r *http.Request) string {
	return resourceOf(r.URL.Path).class
}

// route dispatches r by the route table: by path, then by method; it
// checks the caller for the route's scope before the handler runs.
func (h *Handler) route(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Path
	// Every name the routes pass on travels in a protobuf string, which
	// must be UTF-8: anything else is the client's mistake, said here once.
	if q, err := url.QueryUnescape(r.URL.RawQuery); !utf8.ValidString(p) || err == nil && !utf8.ValidString(q) {
		h.writeError(w, r, clientError(http.StatusBadRequest, "the request URL is not valid UTF-8"))
		return
	}
	res := resourceOf(p)
	rt := res.methods[r.Method]
	if rt == nil {
		rt = res.methods["*"]
	}
	if rt == nil {
		w.Header().Set("Allow", res.allow)
		writeText(w, http.StatusMethodNotAllowed, "method "+r.Method+" not allowed; allowed: "+res.allow)
		return
	}
	if rt.scope != anyone {
		id, err := h.Auth.Authorize(r, rt.scope)
		if err != nil {
			h.writeError(w, r, err)
			return
		}
		// The token's name goes to the access log.
		if rec, ok := w.(*recorder); ok {
			rec.user = id.Name
		}
		if rt.scope == auth.Push {
			// A push's handler may need who pushes (the token's
			// pattern); reads, the bulk of the traffic, need no one
			// and allocate nothing for it.
			r = r.WithContext(auth.WithIdentity(r.Context(), id))
		}
	}
	rt.handler(h, w, r)
}

// pushIdentity is who sends the push r, as the route table found.
func pushIdentity(r *http.Request) (auth.Identity, error) {
	id, ok := auth.IdentityFrom(r.Context())
	if !ok {
		return auth.Identity{}, fmt.Errorf("%s %s: the route table checked no credentials", r.Method, r.URL.Path)
	}
	return id, nil
}
