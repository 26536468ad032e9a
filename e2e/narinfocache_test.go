package e2e

import (
	"fmt"
	"net/http"
	"testing"
	"time"
)

// TestNarinfoCacheBound runs the gateway with its narinfo cache on but
// without the index watch (-narinfo-cache-max-age 0), as when the watch is
// down: a second lookup within the TTL does not reach the index, and a
// deleted path stops being served within the TTL (plus polling slack).
// multigw_test.go tests the cache with the watch.
func TestNarinfoCacheBound(t *testing.T) {
	const ttl = 2 * time.Second
	c := newCluster(t, withArgs("gateway", "-narinfo-cache-ttl", ttl.String(), "-narinfo-cache-max-age", "0"))
	top, _ := buildClosure(t)
	mustNix(t, nixConfig("netrc-file = "+c.netrc(c.pushToken)), "nix", "copy", "--to", c.URL, top)

	index := "http://" + c.indexMetrics + "/metrics"
	const found = `grpc_server_handled_total{grpc_code="OK",grpc_method="GetPathInfo",grpc_service="nixcache.index.v1.IndexService",grpc_type="unary"}`
	url := c.URL + "/" + hashPart(top) + ".narinfo"
	if got := httpStatus(t, "GET", url, "", nil); got != http.StatusOK {
		t.Fatalf("narinfo: %d", got)
	}
	before := metric(t, index, found)
	for range 5 {
		if got := httpStatus(t, "GET", url, "", nil); got != http.StatusOK {
			t.Fatalf("narinfo again: %d", got)
		}
	}
	if after := metric(t, index, found); after != before {
		t.Errorf("5 lookups within the TTL reached the index %v times, want 0 (cached)", after-before)
	}

	c.admin("DeletePath", `{"path": "`+top+`"}`)
	deleted := time.Now()
	waitFor(t, ttl+3*time.Second, fmt.Sprintf("a deleted path 404 (TTL %v)", ttl), func() bool {
		return httpStatus(t, "GET", url, "", nil) == http.StatusNotFound
	})
	t.Logf("deleted path 404 after %v (TTL %v)", time.Since(deleted).Round(time.Millisecond), ttl)
}
