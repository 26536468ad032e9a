package e2e

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// metric returns the value of one series (name with its labels, as
// /metrics prints it) from the page at url; 0 when the series is absent.
func metric(t *testing.T, url, series string) float64 {
	t.Helper()
	r := httpDo(t, "GET", url, "", nil, nil)
	if r.status != http.StatusOK {
		t.Fatalf("GET %s: %d %s", url, r.status, r.body)
	}
	for _, line := range strings.Split(r.body, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(strings.Fields(v)[0], 64)
			if err != nil {
				t.Fatalf("%s: %q: %v", url, line, err)
			}
			return f
		}
	}
	return 0
}

// TestMetricsAndHealth: each service's /metrics counts a narinfo request
// (the gateway by route and result, the index by RPC) and the signatures
// of a push; /healthz answers on each; the gateway's /readyz follows the
// index.
func TestMetricsAndHealth(t *testing.T) {
	c := newCluster(t)
	top, closure := buildClosure(t)
	mustNix(t, nixConfig("netrc-file = "+c.netrc(c.pushToken)), "nix", "copy", "--to", c.URL, top)

	gateway := c.URL + "/metrics"
	index := "http://" + c.indexMetrics + "/metrics"
	signer := "http://" + c.signerMetrics + "/metrics"
	const (
		hits        = `nixcache_narinfo_requests_total{result="hit"}`
		misses      = `nixcache_narinfo_requests_total{result="miss"}`
		narinfo200  = `nixcache_http_requests_total{code="200",method="GET",route="narinfo"}`
		indexFound  = `grpc_server_handled_total{grpc_code="OK",grpc_method="GetPathInfo",grpc_service="nixcache.index.v1.IndexService",grpc_type="unary"}`
		indexAbsent = `grpc_server_handled_total{grpc_code="NotFound",grpc_method="GetPathInfo",grpc_service="nixcache.index.v1.IndexService",grpc_type="unary"}`
		signatures  = `nixcache_signer_signatures_total{key="e2e-cache-1"}`
		signCalls   = `grpc_server_handled_total{grpc_code="OK",grpc_method="Sign",grpc_service="nixcache.signer.v1.SignerService",grpc_type="unary"}`
	)
	if n := metric(t, signer, signatures); n < float64(len(closure)) {
		t.Errorf("signer: %s = %v after pushing %d paths", signatures, n, len(closure))
	}
	if n := metric(t, signer, signCalls); n < 1 {
		t.Errorf("signer: %s = %v after a push", signCalls, n)
	}
	if n := metric(t, index, `nixcache_catalog_paths{source="pushed"}`); n != float64(len(closure)) {
		t.Errorf("index: catalogue gauge of pushed paths = %v after pushing %d paths", n, len(closure))
	}
	if n := metric(t, index, `nixcache_catalog_nar_bytes`); n <= 0 {
		t.Errorf("index: catalogue NAR bytes = %v after a push", n)
	}

	type snapshot struct{ hits, misses, narinfo200, found, absent float64 }
	take := func() snapshot {
		return snapshot{
			metric(t, gateway, hits), metric(t, gateway, misses), metric(t, gateway, narinfo200),
			metric(t, index, indexFound), metric(t, index, indexAbsent),
		}
	}
	before := take()
	if got := httpStatus(t, "GET", c.URL+"/"+hashPart(top)+".narinfo", "", nil); got != http.StatusOK {
		t.Fatalf("narinfo of a pushed path: %d", got)
	}
	if got := httpStatus(t, "GET", c.URL+"/0123456789abcdfghijklmnpqrsvwxyz.narinfo", "", nil); got != http.StatusNotFound {
		t.Fatalf("narinfo of an absent path: %d", got)
	}
	after := take()
	want := snapshot{before.hits + 1, before.misses + 1, before.narinfo200 + 1, before.found + 1, before.absent + 1}
	if after != want {
		t.Errorf("after one hit and one miss: %+v, want %+v", after, want)
	}

	for name, url := range map[string]string{
		"gateway /healthz": c.URL + "/healthz",
		"gateway /readyz":  c.URL + "/readyz",
		"index /healthz":   "http://" + c.indexMetrics + "/healthz",
		"signer /healthz":  "http://" + c.signerMetrics + "/healthz",
	} {
		if got := httpStatus(t, "GET", url, "", nil); got != http.StatusOK {
			t.Errorf("%s: %d, want 200", name, got)
		}
	}

	c.stop("index")
	r := httpDo(t, "GET", c.URL+"/readyz", "", nil, nil)
	if r.status != http.StatusServiceUnavailable || !strings.Contains(r.body, "index: down") || strings.Contains(r.body, "signer") {
		t.Errorf("/readyz with the index stopped: %d %q, want 503 naming the index (and not the signer, which the gateway never calls)", r.status, r.body)
	}
	if got := httpStatus(t, "GET", c.URL+"/healthz", "", nil); got != http.StatusOK {
		t.Errorf("gateway /healthz with the index stopped: %d, want 200 (the gateway itself is up)", got)
	}
	c.start("index")
	// The gateway reconnects with backoff: poll until ready again.
	waitFor(t, 30*time.Second, "/readyz 200 after the index restarted", func() bool {
		return httpStatus(t, "GET", c.URL+"/readyz", "", nil) == http.StatusOK
	})
}
