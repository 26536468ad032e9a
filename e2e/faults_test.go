package e2e

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nixcache/nixcache/nix/nar"
	"github.com/nixcache/nixcache/nix/nixbase32"
)

// faultBound is how fast the gateway must answer while a service is
// down, frozen or blackholed: its deadlines in these tests are 2 s (and
// gRPC's own connection timeout, which must not be what ends a request,
// is 5 s).
const faultBound = 4 * time.Second

// faultTimeouts are the gateway's deadlines in the fault tests: short, so
// that a frozen upstream is given up on well within faultBound.
var faultTimeouts = []string{"-request-timeout", "2s", "-transfer-idle-timeout", "2s"}

// faultClient gives up long after faultBound: a hang fails the test with
// a time instead of stalling it.
var faultClient = &http.Client{Timeout: 60 * time.Second}

// faultRequest is one request of a fault matrix.
type faultRequest struct {
	name, method, url, token string
	body                     []byte
}

// timed does r and returns its answer and how long it took; a transport
// error (a hang cut by faultClient, a reset) fails the test.
func (r faultRequest) timed(t *testing.T) (response, time.Duration) {
	t.Helper()
	req, err := http.NewRequest(r.method, r.url, bytes.NewReader(r.body))
	if err != nil {
		t.Fatal(err)
	}
	if r.token != "" {
		req.SetBasicAuth("nixcache", r.token)
	}
	start := time.Now()
	resp, err := faultClient.Do(req)
	if err != nil {
		t.Fatalf("%s: %v after %s", r.name, err, time.Since(start).Round(time.Millisecond))
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	took := time.Since(start)
	if err != nil {
		t.Fatalf("%s: read body: %v", r.name, err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: string(b)}, took
}

// expectUnavailable checks that each request is answered 503 (or 504)
// with a Retry-After header within faultBound.
func expectUnavailable(t *testing.T, reqs []faultRequest) {
	t.Helper()
	for _, r := range reqs {
		resp, took := r.timed(t)
		ok := resp.status == http.StatusServiceUnavailable || resp.status == http.StatusGatewayTimeout
		switch {
		case !ok || resp.header.Get("Retry-After") == "":
			t.Errorf("%s: %d, Retry-After %q, after %s: want 503 with Retry-After\n%s",
				r.name, resp.status, resp.header.Get("Retry-After"), took.Round(time.Millisecond), resp.body)
		case took > faultBound:
			t.Errorf("%s: %d after %s, want within %s", r.name, resp.status, took.Round(time.Millisecond), faultBound)
		default:
			t.Logf("%s: %d after %s: %s", r.name, resp.status, took.Round(time.Millisecond), strings.TrimSpace(resp.body))
		}
	}
}

// pid is the process id of a running service.
func (c *cluster) pid(service string) int {
	c.t.Helper()
	p := c.procs[service]
	if p == nil {
		c.t.Fatalf("%s is not running", service)
	}
	return p.cmd.Process.Pid
}

// freeze stops a service with SIGSTOP: its sockets stay open, nothing
// answers. The returned function (also run at cleanup) resumes it.
func (c *cluster) freeze(service string) (thaw func()) {
	c.t.Helper()
	proc := c.procs[service].cmd.Process
	if err := proc.Signal(syscall.SIGSTOP); err != nil {
		c.t.Fatal(err)
	}
	// The signal is delivered when the kernel next schedules the process:
	// until /proc says it stopped, it may still answer a request.
	stat := fmt.Sprintf("/proc/%d/stat", proc.Pid)
	waitFor(c.t, 10*time.Second, service+" stopped", func() bool {
		b, err := os.ReadFile(stat)
		// The state is the field after the command name in parentheses.
		i := bytes.LastIndexByte(b, ')')
		return err == nil && i >= 0 && i+2 < len(b) && b[i+2] == 'T'
	})
	var once sync.Once
	thaw = func() { once.Do(func() { _ = proc.Signal(syscall.SIGCONT) }) }
	c.t.Cleanup(thaw)
	return thaw
}

// TestIndexDown: while the index is stopped, killed or frozen, narinfo
// and NAR reads and both halves of a push get 503 with Retry-After within
// faultBound, never a hang or a 500; once it is back the same gateway
// process serves again, with no restart.
func TestIndexDown(t *testing.T) {
	c := newCluster(t, withArgs("gateway", faultTimeouts...))
	top, closure := buildClosure(t)
	mustNix(t, nixConfig("netrc-file = "+c.netrc(c.pushToken)), "nix", "copy", "--to", c.URL, top)
	narinfo := c.URL + "/" + hashPart(top) + ".narinfo"
	narFile := narURL(t, c, top)
	_, closure2 := buildClosure(t)
	u := newUpload(t, pathNamed(t, closure2, "-leaf-"))
	gateway := c.pid("gateway")

	reqs := []faultRequest{
		{name: "GET narinfo", method: "GET", url: narinfo},
		{name: "HEAD narinfo", method: "HEAD", url: narinfo},
		{name: "GET NAR", method: "GET", url: narFile},
		{name: "HEAD NAR", method: "HEAD", url: narFile},
		{name: "PUT NAR", method: "PUT", url: c.URL + "/nar/" + u.fileHash() + ".nar", token: c.pushToken, body: u.nar},
		{name: "PUT narinfo", method: "PUT", url: c.URL + "/" + hashPart(u.storePath) + ".narinfo", token: c.pushToken, body: []byte(u.narinfo())},
	}
	recovered := func(t *testing.T) {
		t.Helper()
		d := waitFor(t, 15*time.Second, "narinfo served again", func() bool {
			return httpStatus(t, "GET", narinfo, "", nil) == http.StatusOK
		})
		t.Logf("served again %s after the index was back", d.Round(time.Millisecond))
		if r := httpDo(t, "GET", narFile, "", nil, nil); r.status != http.StatusOK || len(r.body) == 0 {
			t.Errorf("NAR after recovery: %d, %d bytes", r.status, len(r.body))
		}
	}

	t.Run("stopped", func(t *testing.T) {
		c.stop("index")
		expectUnavailable(t, reqs)
		c.start("index")
		recovered(t)
	})
	t.Run("killed", func(t *testing.T) {
		c.kill("index")
		expectUnavailable(t, reqs)
		c.start("index")
		recovered(t)
	})
	t.Run("frozen", func(t *testing.T) {
		// Its connections stay up and nothing answers: only the
		// gateway's deadlines end the requests.
		thaw := c.freeze("index")
		expectUnavailable(t, reqs)
		thaw()
		recovered(t)
	})

	if got := c.pid("gateway"); got != gateway {
		t.Errorf("the gateway was restarted (pid %d, was %d)", got, gateway)
	}
	// The push refused while the index was down goes through now.
	for _, r := range reqs[4:] {
		if resp, _ := r.timed(t); resp.status/100 != 2 {
			t.Errorf("%s after recovery: %d %s", r.name, resp.status, resp.body)
		}
	}
	store := filepath.Join(t.TempDir(), "store")
	mustNix(t, nixConfig("trusted-public-keys = "+c.publicKey), "nix", "copy", "--from", c.URL, "--to", store, top)
	if _, err := os.Stat(filepath.Join(store, strings.TrimPrefix(closure[0], "/"))); err != nil {
		t.Errorf("substituted closure: %v", err)
	}
}

// TestSignerDown: while the signer is killed or frozen, the signed paths
// are still served (Nix substitutes them), a push gets 503 with
// Retry-After within faultBound (never stored unsigned), and pushing works
// again once the signer is back, with neither the index nor the gateway
// restarted.
func TestSignerDown(t *testing.T) {
	c := newCluster(t, withArgs("index", "-sign-timeout", "2s"))
	top, closure := buildClosure(t)
	mustNix(t, nixConfig("netrc-file = "+c.netrc(c.pushToken)), "nix", "copy", "--to", c.URL, top)
	pids := map[string]int{"index": c.pid("index"), "gateway": c.pid("gateway")}

	reads := func(t *testing.T) {
		t.Helper()
		for _, p := range closure {
			r := httpDo(t, "GET", c.URL+"/"+hashPart(p)+".narinfo", "", nil, nil)
			if r.status != http.StatusOK || !strings.Contains(r.body, "Sig: e2e-cache-1:") {
				t.Errorf("narinfo of %s with the signer down: %d\n%s", p, r.status, r.body)
			}
			if r := httpDo(t, "GET", narURL(t, c, p), "", nil, nil); r.status != http.StatusOK {
				t.Errorf("NAR of %s with the signer down: %d", p, r.status)
			}
		}
		store := filepath.Join(t.TempDir(), "store")
		mustNix(t, nixConfig("trusted-public-keys = "+c.publicKey), "nix", "copy", "--from", c.URL, "--to", store, top)
	}
	gatewayMetrics := c.URL + "/metrics"
	const narinfo503 = `nixcache_http_requests_total{code="503",method="PUT",route="narinfo"}`
	// push checks a push while the signer is down: the NAR is taken (it
	// needs no signature), the narinfo gets 503 with Retry-After within
	// faultBound and is not served. A real `nix copy --to` started then
	// gets a 503 too (Nix 2.8 then retries the upload without its body,
	// which the gateway cuts after 15 s, and the copy hangs: it is killed
	// once the signer is back, and pushing again works).
	push := func(t *testing.T) *pushing {
		t.Helper()
		top2, closure2 := buildClosure(t)
		u := newUpload(t, pathNamed(t, closure2, "-leaf-"))
		p := &pushing{top: top2, narinfo: faultRequest{name: "PUT narinfo", method: "PUT", url: c.URL + "/" + hashPart(u.storePath) + ".narinfo",
			token: c.pushToken, body: []byte(u.narinfo())}}
		if r := httpDo(t, "PUT", c.URL+"/nar/"+u.fileHash()+".nar", c.pushToken, bytes.NewReader(u.nar), nil); r.status/100 != 2 {
			t.Fatalf("PUT NAR with the signer down: %d %s (the NAR needs no signature)", r.status, r.body)
		}
		expectUnavailable(t, []faultRequest{p.narinfo})
		if r := httpDo(t, "GET", c.URL+"/"+hashPart(u.storePath)+".narinfo", "", nil, nil); r.status != http.StatusNotFound {
			t.Errorf("narinfo refused for want of a signature is served: %d\n%s", r.status, r.body)
		}
		refused := metric(t, gatewayMetrics, narinfo503)
		p.nix = startNix(t, nixConfig("netrc-file = "+c.netrc(c.pushToken)), "nix", "copy", "--to", c.URL, top2)
		waitFor(t, 30*time.Second, "nix copy --to answered 503", func() bool { return metric(t, gatewayMetrics, narinfo503) > refused })
		return p
	}
	recovered := func(t *testing.T, p *pushing) {
		t.Helper()
		d := waitFor(t, 15*time.Second, "push accepted again", func() bool {
			resp, _ := p.narinfo.timed(t)
			return resp.status == http.StatusNoContent
		})
		t.Logf("push accepted %s after the signer was back", d.Round(time.Millisecond))
		p.nix.kill()
		mustNix(t, nixConfig("netrc-file = "+c.netrc(c.pushToken)), "nix", "copy", "--to", c.URL, p.top)
		store := filepath.Join(t.TempDir(), "store")
		mustNix(t, nixConfig("trusted-public-keys = "+c.publicKey), "nix", "copy", "--from", c.URL, "--to", store, p.top)
	}

	t.Run("killed", func(t *testing.T) {
		c.kill("signer")
		reads(t)
		p := push(t)
		c.start("signer")
		recovered(t, p)
	})
	t.Run("frozen", func(t *testing.T) {
		// Only the index's -sign-timeout ends the signing call.
		thaw := c.freeze("signer")
		reads(t)
		p := push(t)
		thaw()
		recovered(t, p)
	})
	for s, pid := range pids {
		if got := c.pid(s); got != pid {
			t.Errorf("the %s was restarted (pid %d, was %d)", s, got, pid)
		}
	}
}

// pushing is a push tried while the signer is down.
type pushing struct {
	top     string
	narinfo faultRequest
	nix     *bgNix
}

// bgNix is a Nix command running in the background.
type bgNix struct {
	t      *testing.T
	cmd    *exec.Cmd
	stderr bytes.Buffer
	done   chan error
}

// startNix starts a Nix command as nixRun runs it, in the background; it
// is killed at the end of the test if still running.
func startNix(t *testing.T, config string, name string, args ...string) *bgNix {
	t.Helper()
	home := t.TempDir()
	n := &bgNix{t: t, cmd: exec.Command(name, args...), done: make(chan error, 1)}
	n.cmd.Env = append(os.Environ(), "NIX_CONFIG="+config, "HOME="+home, "XDG_CACHE_HOME="+filepath.Join(home, ".cache"))
	n.cmd.Stderr = &n.stderr
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { n.done <- n.cmd.Wait() }()
	t.Cleanup(n.kill)
	return n
}

// kill ends the command if it is still running.
func (n *bgNix) kill() {
	_ = n.cmd.Process.Kill()
	err := <-n.done
	n.done <- err
}

// blackhole listens on loopback and accepts connections but never reads
// or writes: a peer that takes the TCP connection and never answers.
// It returns its address and a count of the connections it took.
func blackhole(t *testing.T) (addr string, accepted func() int) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			conn, err := lis.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, conn)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		lis.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return lis.Addr().String(), func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(conns)
	}
}

// TestIndexBlackholed: a gateway whose index address accepts TCP
// connections and never answers gives every request a 503 within
// faultBound, again and again: the deadlines end what the connection
// never will.
func TestIndexBlackholed(t *testing.T) {
	addr, accepted := blackhole(t)
	c := newCluster(t, withArgs("gateway", append([]string{"-index-addr", addr}, faultTimeouts...)...))
	u := upload{nar: canonicalNAR(t, "data", 300000, 'b')}
	hash := randomHashPart(t)
	reqs := []faultRequest{
		{name: "GET NAR", method: "GET", url: c.URL + "/nar/" + u.fileHash() + ".nar"},
		{name: "GET narinfo", method: "GET", url: c.URL + "/" + hash + ".narinfo"},
		{name: "PUT NAR", method: "PUT", url: c.URL + "/nar/" + u.fileHash() + ".nar", token: c.pushToken, body: u.nar},
		{name: "PUT narinfo", method: "PUT", url: c.URL + "/" + hash + ".narinfo", token: c.pushToken, body: []byte(fmt.Sprintf(
			"StorePath: /nix/store/%s-x\nURL: nar/%s.nar\nCompression: none\nNarHash: sha256:%s\nNarSize: %d\nReferences: \n",
			hash, u.fileHash(), u.fileHash(), len(u.nar)))},
	}
	// Each request first once, on a fresh gateway: while its connection
	// is being made only its deadlines end the wait; after that gRPC
	// fails the calls at once until the connection is up.
	for i, first := range reqs {
		t.Run(first.name+" first", func(t *testing.T) {
			c.stop("gateway")
			c.start("gateway")
			expectUnavailable(t, append([]faultRequest{first}, append(reqs[:i:i], reqs[i+1:]...)...))
		})
	}
	if n := accepted(); n == 0 {
		t.Error("the gateway never connected to the blackhole: the 503s came from elsewhere")
	}
	resp, took := faultRequest{name: "GET /readyz", method: "GET", url: c.URL + "/readyz"}.timed(t)
	if resp.status != http.StatusServiceUnavailable || !strings.Contains(resp.body, "index: down") || took > faultBound {
		t.Errorf("/readyz: %d after %s, want 503 naming the index within %s:\n%s", resp.status, took, faultBound, resp.body)
	}
}

// bigNAR writes the NAR of a directory holding one file of size bytes to
// a file, and returns its path and its sha256 in nix32.
func bigNAR(t *testing.T, size int) (path, hash string) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "big.nar")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sum := sha256.New()
	w := nar.NewWriter(io.MultiWriter(f, sum))
	if err := w.WriteHeader(&nar.Header{Path: "/", Type: nar.TypeDirectory}); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteHeader(&nar.Header{Path: "/big", Type: nar.TypeRegular, Size: uint64(size)}); err != nil {
		t.Fatal(err)
	}
	block := bytes.Repeat([]byte("nixcache"), 1<<17) // 1 MiB
	for left := size; left > 0; left -= len(block) {
		if _, err := w.Write(block[:min(left, len(block))]); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return path, nixbase32.EncodeToString(sum.Sum(nil))
}

// TestNarDownloadCancelled: a client that leaves in the middle of a
// large NAR download cancels the index's GetNar stream (the index's
// in-flight gauge goes back to 0, the call ends Canceled); and a download
// whose index freezes mid-stream is cut after -transfer-idle-timeout, its
// stream cancelled too.
func TestNarDownloadCancelled(t *testing.T) {
	c := newCluster(t, withArgs("gateway", faultTimeouts...))
	const size = 128 << 20 // far more than every buffer on the way
	file, hash := bigNAR(t, size)
	fi, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	narURL := c.URL + "/nar/" + hash + ".nar"
	if r := httpDo(t, "PUT", narURL, c.pushToken, f, nil); r.status/100 != 2 {
		t.Fatalf("PUT big NAR: %d %s", r.status, r.body)
	}
	storeHash := randomHashPart(t)
	ni := fmt.Sprintf("StorePath: /nix/store/%s-big\nURL: nar/%s.nar\nCompression: none\nFileHash: sha256:%s\nFileSize: %d\nNarHash: sha256:%s\nNarSize: %d\nReferences: \n",
		storeHash, hash, hash, fi.Size(), hash, fi.Size())
	if r := httpDo(t, "PUT", c.URL+"/"+storeHash+".narinfo", c.pushToken, strings.NewReader(ni), nil); r.status/100 != 2 {
		t.Fatalf("PUT narinfo: %d %s", r.status, r.body)
	}

	indexMetrics := "http://" + c.indexMetrics + "/metrics"
	const labels = `{grpc_method="GetNar",grpc_service="nixcache.index.v1.IndexService",grpc_type="server_stream"}`
	const canceledLabels = `{grpc_code="Canceled",grpc_method="GetNar",grpc_service="nixcache.index.v1.IndexService",grpc_type="server_stream"}`
	inFlight := func() float64 { return metric(t, indexMetrics, "grpc_server_in_flight"+labels) }
	canceled := func() float64 { return metric(t, indexMetrics, "grpc_server_handled_total"+canceledLabels) }

	// start begins a download and reads its first MiB.
	start := func(t *testing.T) *http.Response {
		t.Helper()
		resp, err := faultClient.Get(narURL)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusOK || resp.ContentLength != fi.Size() {
			resp.Body.Close()
			t.Fatalf("GET big NAR: %d, Content-Length %d", resp.StatusCode, resp.ContentLength)
		}
		if _, err := io.ReadFull(resp.Body, make([]byte, 1<<20)); err != nil {
			t.Fatalf("read the first MiB: %v", err)
		}
		return resp
	}

	t.Run("client leaves", func(t *testing.T) {
		before := canceled()
		resp := start(t)
		if n := inFlight(); n != 1 {
			t.Errorf("GetNar streams in flight during the download: %v, want 1", n)
		}
		resp.Body.Close() // mid-body: the connection is closed
		d := waitFor(t, 5*time.Second, "GetNar stream ended", func() bool { return inFlight() == 0 })
		t.Logf("the index's stream ended %s after the client left", d.Round(time.Millisecond))
		if got := canceled(); got != before+1 {
			t.Errorf("GetNar calls ended Canceled: %v, want %v", got, before+1)
		}
	})

	t.Run("index freezes", func(t *testing.T) {
		resp := start(t)
		defer resp.Body.Close()
		thaw := c.freeze("index")
		begin := time.Now()
		n, err := io.Copy(io.Discard, resp.Body)
		took := time.Since(begin)
		n += 1 << 20
		if err == nil || n >= fi.Size() {
			t.Errorf("download from a frozen index: %d of %d bytes, err %v; want it cut short", n, fi.Size(), err)
		}
		if took > 2*faultBound {
			t.Errorf("download cut %s after the index froze, want within %s", took.Round(time.Millisecond), 2*faultBound)
		}
		t.Logf("download cut after %d of %d bytes, %s after the index froze: %v", n, fi.Size(), took.Round(time.Millisecond), err)
		thaw()
		d := waitFor(t, 5*time.Second, "GetNar stream ended", func() bool { return inFlight() == 0 })
		t.Logf("the index's stream ended %s after it resumed", d.Round(time.Millisecond))
		r := httpDo(t, "GET", narURL, "", nil, nil)
		if r.status != http.StatusOK || int64(len(r.body)) != fi.Size() {
			t.Errorf("GET big NAR after the index resumed: %d, %d bytes", r.status, len(r.body))
		}
	})
}
