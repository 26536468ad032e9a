package httpapi

import (
	"net/http"
	"strings"
)

// Route classes, the "route" label of the gateway's HTTP metrics.
const (
	RouteCacheInfo = "nix-cache-info"
	RouteNarinfo   = "narinfo"
	RouteNar       = "nar"
	RouteAPI       = "api"
	RouteLanding   = "landing"
	// The side files (artifact.go).
	RouteLog         = "log"
	RouteListing     = "listing"
	RouteRealisation = "realisation"
	RouteDebugInfo   = "debuginfo"
	RouteOther       = "other"
)

// RouteClass names the kind of resource r asks for, by the same tests as
// the router: a small fixed set, for metrics.
func RouteClass(r *http.Request) string {
	p := r.URL.Path
	switch {
	case p == "/":
		return RouteLanding
	case isAdminPath(p):
		return RouteAPI
	case p == "/nix-cache-info":
		return RouteCacheInfo
	case strings.HasPrefix(p, "/nar/"):
		return RouteNar
	case isNarinfoPath(p):
		return RouteNarinfo
	case isLogPath(p):
		return RouteLog
	case isListingPath(p):
		return RouteListing
	case isRealisationPath(p):
		return RouteRealisation
	case isDebugInfoPath(p):
		return RouteDebugInfo
	default:
		return RouteOther
	}
}
