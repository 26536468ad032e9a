package e2e

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// withNarDir runs the gateway co-located: it reads the index's nars/
// directory itself (-nar-dir).
func withNarDir() clusterOption {
	return func(c *cluster) {
		c.extraArgs["gateway"] = append(c.extraArgs["gateway"], "-nar-dir", filepath.Join(c.dir, "index", "nars"))
	}
}

// TestColocatedNarDir substitutes a closure from a gateway that sends the
// stored NAR files from the index's directory: the real Nix gets the same
// paths, the index streams no NAR (GetNar is never called) yet counts the
// downloads (reported by the gateway in batches), a file downloaded again
// costs no index call, ranges work, and a file Verify quarantined is not
// served although the gateway can still read it and had kept the index's
// answer for it.
func TestColocatedNarDir(t *testing.T) {
	c := newCluster(t, withNarDir(), withArgs("gateway", cachingGateway...))
	top, closure := buildClosure(t)
	local := pathInfos(t, nixConfig(), "--recursive", top)
	mustNix(t, nixConfig("netrc-file = "+c.netrc(c.pushToken)), "nix", "copy", "--to", c.URL+"?compression=zstd", top)

	substituteAndCheck(t, c, top, closure, local)

	index := "http://" + c.indexMetrics + "/metrics"
	const series = `grpc_server_handled_total{grpc_code="OK",grpc_method="%s",grpc_service="nixcache.index.v1.IndexService",grpc_type="%s"}`
	getNars := fmt.Sprintf(series, "GetNar", "server_stream")
	if n := metric(t, index, getNars); n != 0 {
		t.Errorf("the index streamed %v NARs; the gateway should have read them from -nar-dir", n)
	}
	if n := metric(t, index, fmt.Sprintf(series, "StatNar", "unary")); n < float64(len(closure)) {
		t.Errorf("StatNar answered %v times, want at least one per path (%d)", n, len(closure))
	}
	// The gateway reports its downloads every second.
	eventually(t, 10*time.Second, "3 downloads in GetStats", func() (bool, string) {
		stats := messages(t, c.admin("GetStats", ""))
		got := stats[0]["narDownloads"]
		return got == "3", fmt.Sprintf("GetStats narDownloads %v, want 3 (one per path): %v", got, stats)
	})

	// A byte range, from the file on disk.
	file := c.narFileOf(top)
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	narURL := c.URL + "/nar/" + filepath.Base(file)

	// Downloaded again, the file is served without asking the index: its
	// answer is kept while the gateway follows the index's changes.
	statNars := fmt.Sprintf(series, "StatNar", "unary")
	before := metric(t, index, statNars)
	for range 3 {
		if r := httpDo(t, "GET", narURL, "", nil, nil); r.status != http.StatusOK || r.body != string(data) {
			t.Fatalf("GET %s again: %d, %d bytes", narURL, r.status, len(r.body))
		}
	}
	if n := metric(t, index, statNars) - before; n != 0 {
		t.Errorf("3 more downloads of a file asked the index %v times, want 0", n)
	}
	r := httpDo(t, "GET", narURL, "", nil, http.Header{"Range": {"bytes=10-19"}})
	if r.status != http.StatusPartialContent || r.body != string(data[10:20]) {
		t.Errorf("GET %s bytes=10-19: %d, %q; want 206, %q", narURL, r.status, r.body, data[10:20])
	}

	// nix-serve's URL form is the uncompressed NAR of a path: the index
	// decompresses and streams it (and so the series above is the right
	// one to have found 0 in).
	if r := httpDo(t, "GET", c.URL+"/nar/"+hashPart(top)+".nar", "", nil, nil); r.status != http.StatusOK || uint64(len(r.body)) != local[top].NarSize {
		t.Errorf("GET nar/<store hash>.nar: %d, %d bytes, want 200, %d", r.status, len(r.body), local[top].NarSize)
	}
	// The server counts a call when its handler returns, which may be
	// just after the client has the last byte.
	eventually(t, 10*time.Second, "one GetNar counted", func() (bool, string) {
		n := metric(t, index, getNars)
		return n == 1, fmt.Sprintf("GetNar answered %v times after one nix-serve download, want 1", n)
	})

	// Rot the file in place (same size): Verify quarantines it, and the
	// gateway, which could read it, must not serve it.
	data[len(data)/2] ^= 0xff
	if err := os.WriteFile(file, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if last := messages(t, c.admin("Verify", "")); last[len(last)-1]["bad"] != "1" {
		t.Fatalf("Verify did not find the rotted file: %v", last)
	}
	// The quarantine reaches the gateway as a removal on its watch, which
	// drops what it kept of the file: within the bound of the narinfo
	// cache (TestSeveralGateways), and for good.
	start := time.Now()
	for got := httpStatus(t, "GET", narURL, "", nil); got != http.StatusNotFound; got = httpStatus(t, "GET", narURL, "", nil) {
		if time.Since(start) > 3*time.Second {
			t.Fatalf("GET %s of a quarantined file: %d for 3 s, want 404", narURL, got)
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("quarantined file refused %v after Verify returned", time.Since(start))
	for range 3 {
		if got := httpStatus(t, "GET", narURL, "", nil); got != http.StatusNotFound {
			t.Errorf("GET %s of a quarantined file, again: %d, want 404", narURL, got)
		}
	}
}
