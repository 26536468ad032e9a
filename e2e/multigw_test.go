package e2e

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// watchBound is the documented bound (docs/architecture.md, "How long a removed path may still be served") on how
// long a gateway may serve a path after the index removed it while its
// index watch is up: the watch timeout, after which a silent stream is
// taken for dead and the cache dropped. Events normally arrive within
// milliseconds; the test logs the delay it measured.
const watchBound = 3 * time.Second

// cachingGateway is the gateway's narinfo cache as deployed, but with a
// TTL long enough that only the index watch can make a removed path stop
// being served within watchBound.
var cachingGateway = []string{"-narinfo-cache-max-age", "1h", "-narinfo-cache-ttl", "10m"}

// startGateway starts one more gateway of the cluster, on its own port,
// and returns its URL; it is stopped at the end of the test.
func (c *cluster) startGateway(name string, args ...string) string {
	c.t.Helper()
	addr := freeAddr(c.t)
	logPath := filepath.Join(c.dir, "logs", name+".log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		c.t.Fatal(err)
	}
	// The cluster's gateway flags, then these (the last flag wins).
	full := append(append(c.args("gateway"), args...), "-listen", addr)
	cmd := exec.Command(filepath.Join(binDir, "nixcache-gateway"), full...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		c.t.Fatalf("start %s: %v", name, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(done)
	}()
	c.t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			c.t.Errorf("%s did not stop within 15s of SIGTERM", name)
			_ = cmd.Process.Kill()
			<-done
		}
		if c.t.Failed() {
			if b, err := os.ReadFile(logPath); err == nil {
				if len(b) > 20000 {
					b = b[len(b)-20000:]
				}
				c.t.Logf("--- %s log (tail) ---\n%s", name, b)
			}
		}
	})
	url := "http://" + addr
	eventually(c.t, 30*time.Second, name+" ready", func() (bool, string) {
		resp, err := http.Get(url + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return true, ""
			}
		}
		select {
		case <-done:
			c.t.Fatalf("%s exited before it was ready", name)
		default:
		}
		return false, fmt.Sprint(err)
	})
	return url
}

// waitMetric polls a gateway's /metrics until series has value want.
func waitMetric(t *testing.T, gateway, series string, want float64, within time.Duration) {
	t.Helper()
	eventually(t, within, gateway+" "+series, func() (bool, string) {
		got := metric(t, gateway+"/metrics", series)
		return got == want, fmt.Sprintf("%v, want %v", got, want)
	})
}

// assertCached fails unless n GETs of url answer code without reaching
// the index.
func assertCached(t *testing.T, c *cluster, url string, code, n int) {
	t.Helper()
	indexMetrics := "http://" + c.indexMetrics + "/metrics"
	const calls = `grpc_server_handled_total{grpc_code="%s",grpc_method="GetPathInfo",grpc_service="nixcache.index.v1.IndexService",grpc_type="unary"}`
	before := metric(t, indexMetrics, fmt.Sprintf(calls, "OK")) + metric(t, indexMetrics, fmt.Sprintf(calls, "NotFound"))
	for range n {
		if got := httpStatus(t, "GET", url, "", nil); got != code {
			t.Fatalf("GET %s: %d, want %d", url, got, code)
		}
	}
	after := metric(t, indexMetrics, fmt.Sprintf(calls, "OK")) + metric(t, indexMetrics, fmt.Sprintf(calls, "NotFound"))
	if after != before {
		t.Errorf("%d lookups of %s reached the index %v times, want 0 (cached)", n, url, after-before)
	}
}

// goneWithin polls url every 5 ms until it answers 404 and returns how
// long that took, failing the test if it takes more than bound.
func goneWithin(t *testing.T, url string, bound time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		code := httpStatus(t, "GET", url, "", nil)
		if code == http.StatusNotFound {
			return time.Since(start)
		}
		if code != http.StatusOK {
			t.Fatalf("GET %s: %d", url, code)
		}
		if time.Since(start) > bound {
			t.Fatalf("GET %s: still served %v after the path was removed (bound %v)", url, time.Since(start), bound)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestSeveralGateways: two gateways in front of one index serve the same
// answers. A push through A is substituted by the real Nix through B,
// which had cached the paths' 404s; B then answers from its cache; a
// delete and a garbage collection through A stop B serving the paths
// within the documented bound, although B's TTL is 10 minutes; after an
// index restart B watches again and the bound still holds.
func TestSeveralGateways(t *testing.T) {
	c := newCluster(t, withArgs("gateway", cachingGateway...))
	a := c.URL
	b := c.startGateway("gateway-b", cachingGateway...)
	const watchUp = "nixcache_index_watch_up"
	for _, g := range []string{a, b} {
		waitMetric(t, g, watchUp, 1, 10*time.Second)
	}
	if n := metric(t, "http://"+c.indexMetrics+"/metrics", "nixcache_watch_watchers"); n != 2 {
		t.Errorf("the index counts %v watchers, want 2 (one per gateway)", n)
	}
	push := nixConfig("netrc-file = " + c.netrc(c.pushToken))
	trusting := nixConfig("trusted-public-keys = " + c.publicKey)

	// B caches the 404 of a path not pushed yet.
	top, closure := buildClosure(t)
	topB := b + "/" + hashPart(top) + ".narinfo"
	if got := httpStatus(t, "GET", topB, "", nil); got != http.StatusNotFound {
		t.Fatalf("before the push, B answers %d", got)
	}
	assertCached(t, c, topB, http.StatusNotFound, 3)

	// Push through A, substitute through B into a fresh store: the
	// publish events dropped B's 404s.
	mustNix(t, push, "nix", "copy", "--to", a, top)
	store := filepath.Join(t.TempDir(), "store")
	subst := nixConfig("substituters = "+b, "trusted-public-keys = "+c.publicKey)
	mustNix(t, subst, "nix-store", "--store", store, "--realise", top)
	copied := pathInfos(t, nixConfig(), "--store", store, "--recursive", top)
	if len(copied) != len(closure) {
		t.Fatalf("substituted %d paths through B, want %d", len(copied), len(closure))
	}
	assertSameTree(t, top, filepath.Join(store, top))
	mustNix(t, trusting, "nix", "copy", "--from", b, "--to", filepath.Join(t.TempDir(), "store"), top)

	// Same answers from both; B answers from its cache now.
	for _, p := range closure {
		ra := httpDo(t, "GET", a+"/"+hashPart(p)+".narinfo", "", nil, nil)
		rb := httpDo(t, "GET", b+"/"+hashPart(p)+".narinfo", "", nil, nil)
		if ra.status != http.StatusOK || ra.body != rb.body {
			t.Errorf("%s: A answers %d %q, B %d %q; want the same narinfo", p, ra.status, ra.body, rb.status, rb.body)
		}
	}
	assertCached(t, c, topB, http.StatusOK, 5)

	// Delete through A's JSON API: B stops serving the path within the bound.
	if r := httpDo(t, "DELETE", a+"/api/v1/paths/"+hashPart(top), c.adminToken, nil, nil); r.status != http.StatusOK {
		t.Fatalf("DELETE through A: %d %s", r.status, r.body)
	}
	d := goneWithin(t, topB, watchBound)
	t.Logf("deleted through A: B answers 404 after %v (bound %v)", d.Round(time.Microsecond), watchBound)

	// Garbage collection: the same.
	top2, _ := buildClosure(t)
	mustNix(t, push, "nix", "copy", "--to", a, top2)
	top2B := b + "/" + hashPart(top2) + ".narinfo"
	if got := httpStatus(t, "GET", top2B, "", nil); got != http.StatusOK {
		t.Fatalf("B: %d for a pushed path", got)
	}
	assertCached(t, c, top2B, http.StatusOK, 2)
	if gone := c.gcPaths(`{"max_total_size": 1}`); len(gone) == 0 {
		t.Fatal("garbage collection collected nothing")
	}
	d = goneWithin(t, top2B, watchBound)
	t.Logf("collected: B answers 404 after %v (bound %v)", d.Round(time.Microsecond), watchBound)

	// Index restart: the gateways notice, then watch again.
	syncs := metric(t, b+"/metrics", "nixcache_index_watch_syncs_total")
	c.stop("index")
	waitMetric(t, b, watchUp, 0, 10*time.Second)
	c.start("index")
	restarted := time.Now()
	for _, g := range []string{a, b} {
		waitMetric(t, g, watchUp, 1, 10*time.Second)
	}
	t.Logf("both gateways in sync %v after the index was serving again", time.Since(restarted).Round(time.Millisecond))
	if got := metric(t, b+"/metrics", "nixcache_index_watch_syncs_total"); got != syncs+1 {
		t.Errorf("B got in sync %v times over the restart, want once", got-syncs)
	}
	top3, _ := buildClosure(t)
	mustNix(t, push, "nix", "copy", "--to", a, top3)
	top3B := b + "/" + hashPart(top3) + ".narinfo"
	if got := httpStatus(t, "GET", top3B, "", nil); got != http.StatusOK {
		t.Fatalf("B after the restart: %d for a pushed path", got)
	}
	assertCached(t, c, top3B, http.StatusOK, 2)
	c.admin("DeletePath", `{"path": "`+top3+`"}`)
	d = goneWithin(t, top3B, watchBound)
	t.Logf("after an index restart, deleted: B answers 404 after %v (bound %v)", d.Round(time.Microsecond), watchBound)
}
