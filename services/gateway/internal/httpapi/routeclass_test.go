package httpapi

import (
	"net/http/httptest"
	"testing"
)

func TestRouteClass(t *testing.T) {
	tests := []struct{ path, want string }{
		{"/", RouteLanding},
		{"/api/v1/stats", RouteAPI},
		{"/api/v1", RouteAPI},
		{"/api/v10", RouteOther},
		{"/nix-cache-info", RouteCacheInfo},
		{"/nar/0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73.nar.xz", RouteNar},
		{"/0123456789abcdfghijklmnpqrsvwxyz.narinfo", RouteNarinfo},
		{"/bad.narinfo", RouteNarinfo}, // the handler answers 400
		{"/x/y.narinfo", RouteOther},
		{"/log/foo", RouteLog},
		{"/0123456789abcdfghijklmnpqrsvwxyz.ls", RouteListing},
		{"/x/y.ls", RouteOther},
		{"/realisations/sha256:00!out.doi", RouteRealisation},
		{"/debuginfo/c89156eb", RouteDebugInfo},
		{"/metrics", RouteOther},
	}
	for _, tt := range tests {
		if got := RouteClass(httptest.NewRequest("GET", tt.path, nil)); got != tt.want {
			t.Errorf("RouteClass(%s) = %q, want %q", tt.path, got, tt.want)
		}
	}
}
