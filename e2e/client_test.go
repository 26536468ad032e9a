package e2e

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The tests in this file drive the push client, bin/nixcache, against the
// real binaries, with path infos from a real nix-daemon of the host's
// store and substitution by the real Nix client.

// nixcacheCmd returns the push client's command with args, its
// environment cleared of NIXCACHE_ variables the test did not set.
func nixcacheCmd(args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(binDir, "nixcache"), args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "NIXCACHE_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	return cmd
}

// runNixcache runs the push client to its end and returns its output.
func runNixcache(t *testing.T, env []string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	cmd := nixcacheCmd(args...)
	cmd.Env = append(cmd.Env, env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	return out.String(), errb.String(), err
}

func mustNixcache(t *testing.T, env []string, args ...string) (stdout, stderr string) {
	t.Helper()
	out, errOut, err := runNixcache(t, env, args...)
	if err != nil {
		t.Fatalf("nixcache %s: %v\n%s", strings.Join(args, " "), err, errOut)
	}
	return out, errOut
}

// pushArgs are the flags of a push of c through the daemon on socket.
func pushArgs(c *cluster, socket string, extra ...string) []string {
	return append([]string{"-cache", c.URL, "-daemon-socket", socket, "-token", c.pushToken}, extra...)
}

// TestClientPush pushes closures with each compression through the
// client, substitutes them into a fresh store, and pushes them again.
func TestClientPush(t *testing.T) {
	c := newCluster(t)
	socket := startNixDaemon(t)
	for _, compression := range []string{"zstd", "none", "xz"} {
		t.Run(compression, func(t *testing.T) {
			top, closure := buildClosure(t)
			local := pathInfos(t, nixConfig(), "--recursive", top)
			// Several jobs: the cache refuses a narinfo whose references it
			// lacks, so any reordering fails the push.
			_, errOut := mustNixcache(t, nil, append([]string{"push"}, pushArgs(c, socket, "-compression", compression, "-jobs", "8", top)...)...)
			if !strings.Contains(errOut, "uploaded=3") {
				t.Errorf("push log does not say 3 paths were uploaded:\n%s", errOut)
			}
			remote := pathInfos(t, nixConfig(), "--store", c.URL, "--recursive", top)
			for _, p := range closure {
				if r, ok := remote[p]; !ok || r.NarHash != local[p].NarHash || !hasSigBy(r.Signatures, "e2e-cache-1") {
					t.Errorf("%s in the cache: %+v (host: %s)", p, r, local[p].NarHash)
				}
			}
			substituteAndCheck(t, c, top, closure, local)

			// Again: one query finds everything present.
			_, errOut = mustNixcache(t, nil, append([]string{"push"}, pushArgs(c, socket, "-compression", compression, top)...)...)
			if !strings.Contains(errOut, "present=3") || !strings.Contains(errOut, "uploaded=0") {
				t.Errorf("second push uploaded again:\n%s", errOut)
			}
		})
	}
}

// published matches the index's log line for a path it published (a
// narinfo upload that took effect, whether or not its client saw the
// answer).
var published = regexp.MustCompile(`msg="published path" store_path=(\S+)`)

// publications counts how many times the index published each store path.
func publications(t *testing.T, c *cluster) map[string]int {
	t.Helper()
	n := map[string]int{}
	for _, m := range published.FindAllStringSubmatch(readFile(t, filepath.Join(c.dir, "logs", "index.log")), -1) {
		n[m[1]]++
	}
	return n
}

// clientDaemon is a running `nixcache daemon` (or watch-store).
type clientDaemon struct {
	cmd  *exec.Cmd
	done chan struct{}
	log  string
}

// startClient starts the client with args in the background, logging to
// a file; it is killed at the end of the test.
func startClient(t *testing.T, args ...string) *clientDaemon {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), "nixcache.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := nixcacheCmd(args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d := &clientDaemon{cmd: cmd, done: make(chan struct{}), log: logPath}
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(d.done)
	}()
	t.Cleanup(func() {
		d.kill()
		if t.Failed() {
			t.Logf("--- nixcache %s log ---\n%s", args[0], readFile(t, logPath))
		}
	})
	return d
}

// kill sends SIGKILL and waits for the process to end.
func (d *clientDaemon) kill() {
	_ = d.cmd.Process.Signal(syscall.SIGKILL)
	<-d.done
}

// hookScript writes a post-build-hook that queues in spool.
func hookScript(t *testing.T, spool string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "post-build-hook")
	script := fmt.Sprintf("#!/bin/sh\nexec %s hook -spool %s\n", filepath.Join(binDir, "nixcache"), spool)
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestClientHook: a post-build-hook in the nix-daemon's nix.conf queues
// what nix-build builds through the daemon, and `nixcache daemon` pushes
// it; the path is substitutable from the cache within 5 s of the build.
func TestClientHook(t *testing.T) {
	c := newCluster(t)
	spool := filepath.Join(t.TempDir(), "spool.db")
	socket := startNixDaemonWith(t, filepath.Join(t.TempDir(), "socket"),
		nixConfig("post-build-hook = "+hookScript(t, spool)))
	startClient(t, append([]string{"daemon"}, pushArgs(c, socket, "-spool", spool, "-poll-interval", "100ms")...)...)

	seed := randomHex(t, 8)
	expr := filepath.Join(t.TempDir(), "hooked.nix")
	if err := os.WriteFile(expr, []byte(fmt.Sprintf(`derivation {
  name = "hooked-%s";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" "echo %s > $out" ];
}
`, seed, seed)), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("nix-build", expr, "--no-out-link")
	cmd.Env = append(os.Environ(), "NIX_CONFIG="+nixConfig(), "NIX_REMOTE=daemon", "NIX_DAEMON_SOCKET_PATH="+socket,
		"HOME="+t.TempDir())
	var errb bytes.Buffer
	cmd.Stderr = &errb
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("nix-build through the daemon: %v\n%s", err, errb.String())
	}
	built := time.Now()
	top := strings.TrimSpace(string(out))
	waitFor(t, 5*time.Second, "built path in the cache", func() bool {
		return httpStatus(t, http.MethodGet, c.URL+"/"+hashPart(top)+".narinfo", "", nil) == http.StatusOK
	})
	t.Logf("%s in the cache %s after nix-build returned", top, time.Since(built).Round(time.Millisecond))
	local := pathInfos(t, nixConfig(), "--recursive", top)
	substituteAndCheck(t, c, top, []string{top}, local)
	status, _ := mustNixcache(t, nil, "status", "-spool", spool)
	if !strings.Contains(status, "queued: 0") || !strings.Contains(status, "pushed: 1") {
		t.Errorf("nixcache status after the push:\n%s", status)
	}

	// The hook itself, timed: it must never hold a build up.
	var times []time.Duration
	for range 50 {
		start := time.Now()
		if _, errOut, err := runNixcache(t, []string{"OUT_PATHS=" + top}, "hook", "-spool", spool); err != nil {
			t.Fatalf("hook: %v\n%s", err, errOut)
		}
		times = append(times, time.Since(start))
	}
	slices.Sort(times)
	median := times[len(times)/2]
	t.Logf("nixcache hook: median %s, max %s (50 runs; make bench measures its p99)", median, times[len(times)-1])
	// A margin for a loaded machine: the hook's two fsyncs wait on the
	// disk, a quiet builder's hook takes a few milliseconds.
	if median > 100*time.Millisecond {
		t.Errorf("nixcache hook median %s, want a few milliseconds (under 100 ms on a loaded machine)", median)
	}
}

// addRandomPaths adds n store paths of size random bytes each (no
// references) and returns them.
func addRandomPaths(t *testing.T, n, size int) []string {
	t.Helper()
	var paths []string
	for i := range n {
		dir := filepath.Join(t.TempDir(), fmt.Sprintf("blob-%d-%s", i, randomHex(t, 4)))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, size)
		for j := range b {
			b[j] = byte(rand.Uint32())
		}
		if err := os.WriteFile(filepath.Join(dir, "data"), b, 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, strings.TrimSpace(mustNix(t, nixConfig(), "nix-store", "--add", dir)))
	}
	return paths
}

// TestClientDaemonKilled: the daemon is SIGKILLed mid-upload, again and
// again; in the end every queued path is in the cache, verified, and its
// narinfo was uploaded exactly once.
func TestClientDaemonKilled(t *testing.T) {
	c := newCluster(t)
	socket := startNixDaemon(t)
	spool := filepath.Join(t.TempDir(), "spool.db")
	top, closure := buildClosure(t)
	blobs := addRandomPaths(t, 12, 3<<20)
	queued := append([]string{top}, blobs...)
	mustNixcache(t, nil, append([]string{"hook", "-spool", spool}, queued...)...)
	all := append(slices.Clone(closure), blobs...)

	args := append([]string{"daemon"}, pushArgs(c, socket, "-spool", spool, "-poll-interval", "50ms", "-jobs", "2")...)
	kills := 0
	for round := range 8 {
		d := startClient(t, args...)
		// Kill once its first upload reached the cache (or after a while).
		start := time.Now()
		for time.Since(start) < 3*time.Second {
			if strings.Contains(readFile(t, filepath.Join(c.dir, "logs", "gateway.log")), "method=PUT") {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		time.Sleep(time.Duration(rand.IntN(400)) * time.Millisecond) // where in the upload: random, on purpose
		select {
		case <-d.done:
			t.Fatalf("round %d: the daemon exited by itself:\n%s", round, readFile(t, d.log))
		default:
		}
		d.kill()
		kills++
		st, _ := mustNixcache(t, nil, "status", "-spool", spool)
		if strings.Contains(st, "queued: 0") {
			break
		}
	}
	d := startClient(t, args...)
	waitFor(t, 60*time.Second, "queue drained", func() bool {
		st, _, err := runNixcache(t, nil, "status", "-spool", spool)
		return err == nil && strings.Contains(st, "queued: 0")
	})
	d.kill()
	t.Logf("%d kills", kills)

	pubs := publications(t, c)
	for _, p := range all {
		if n := pubs[p]; n != 1 {
			t.Errorf("%s: published %d times, want 1", p, n)
		}
	}
	if len(pubs) != len(all) {
		t.Errorf("%d paths published, want %d", len(pubs), len(all))
	}
	local := pathInfos(t, nixConfig(), append([]string{"--recursive"}, queued...)...)
	store := filepath.Join(t.TempDir(), "store")
	mustNix(t, nixConfig("trusted-public-keys = "+c.publicKey), "nix", "copy", "--from", c.URL, "--to", store, top)
	mustNix(t, nixConfig("trusted-public-keys = "+c.publicKey), "nix", append([]string{"copy", "--from", c.URL, "--to", store}, blobs...)...)
	copied := pathInfos(t, nixConfig(), append([]string{"--store", store, "--recursive"}, queued...)...)
	for _, p := range all {
		if copied[p].NarHash != local[p].NarHash {
			t.Errorf("%s: substituted NarHash %q, host %q", p, copied[p].NarHash, local[p].NarHash)
		}
	}
}

// queueStatus is what `nixcache status` prints of spool.
func queueStatus(t *testing.T, spool string) string {
	t.Helper()
	out, errOut, err := runNixcache(t, nil, "status", "-spool", spool)
	if err != nil {
		t.Fatalf("nixcache status: %v\n%s", err, errOut)
	}
	return out
}

// TestClientCacheDown: while the cache is down the daemon keeps the path
// queued and says why in its log and in `nixcache status`; once the cache
// is back, the path is pushed.
func TestClientCacheDown(t *testing.T) {
	c := newCluster(t)
	socket := startNixDaemon(t)
	spool := filepath.Join(t.TempDir(), "spool.db")
	top, closure := buildClosure(t)
	local := pathInfos(t, nixConfig(), "--recursive", top)
	c.stop("gateway")
	mustNixcache(t, []string{"OUT_PATHS=" + top}, "hook", "-spool", spool)
	d := startClient(t, append([]string{"daemon"}, pushArgs(c, socket, "-spool", spool, "-poll-interval", "50ms",
		"-retries", "1", "-max-backoff", "500ms")...)...)
	waitFor(t, 30*time.Second, "the failure in nixcache status", func() bool {
		return strings.Contains(queueStatus(t, spool), "connection refused")
	})
	if st := queueStatus(t, spool); !strings.Contains(st, "queued: 1\n") || !strings.Contains(st, "last error") {
		t.Errorf("nixcache status while the cache is down:\n%s", st)
	}
	if log := readFile(t, d.log); !strings.Contains(log, "the paths stay queued") || !strings.Contains(log, "connection refused") {
		t.Errorf("the daemon's log does not say why:\n%s", log)
	}

	c.start("gateway")
	waitFor(t, 30*time.Second, "the queue drained once the cache is back", func() bool {
		return strings.Contains(queueStatus(t, spool), "queued: 0\n")
	})
	if st := queueStatus(t, spool); strings.Contains(st, "last error") {
		t.Errorf("the error is still shown after the push:\n%s", st)
	}
	substituteAndCheck(t, c, top, closure, local)
}

// TestClientWrongToken: a token the cache refuses keeps the path queued
// with a clear error; the right one pushes it.
func TestClientWrongToken(t *testing.T) {
	c := newCluster(t)
	socket := startNixDaemon(t)
	spool := filepath.Join(t.TempDir(), "spool.db")
	top, closure := buildClosure(t)
	local := pathInfos(t, nixConfig(), "--recursive", top)
	mustNixcache(t, nil, "hook", "-spool", spool, top)

	for _, tc := range []struct{ name, token, want string }{
		{"unknown token", "wrong-" + randomHex(t, 8), "401 Unauthorized"},
		{"token without push", c.readToken, "403 Forbidden"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"daemon"}, pushArgs(c, socket, "-spool", spool, "-poll-interval", "50ms", "-max-backoff", "500ms")...)
			d := startClient(t, append(args, "-token", tc.token)...)
			waitFor(t, 30*time.Second, "the refusal in nixcache status", func() bool {
				return strings.Contains(queueStatus(t, spool), tc.want)
			})
			d.kill()
			if st := queueStatus(t, spool); !strings.Contains(st, "queued: 1\n") {
				t.Errorf("nixcache status:\n%s", st)
			}
			if log := readFile(t, d.log); !strings.Contains(log, tc.want) {
				t.Errorf("the daemon's log does not say why:\n%s", log)
			}
			// A push from the command line fails at once, saying why.
			_, errOut, err := runNixcache(t, nil, append([]string{"push"}, pushArgs(c, socket, "-token", tc.token, top)...)...)
			if err == nil || !strings.Contains(errOut, tc.want) {
				t.Errorf("push with %s: %v\n%s", tc.name, err, errOut)
			}
		})
	}
	startClient(t, append([]string{"daemon"}, pushArgs(c, socket, "-spool", spool, "-poll-interval", "50ms")...)...)
	waitFor(t, 30*time.Second, "the queue drained with the right token", func() bool {
		return strings.Contains(queueStatus(t, spool), "queued: 0\n")
	})
	substituteAndCheck(t, c, top, closure, local)
}

// TestClientTwoGateways: part of a closure is pushed through one gateway,
// the rest through another; the second push asks once and uploads only
// what the first did not, and the whole closure is served by both.
func TestClientTwoGateways(t *testing.T) {
	c := newCluster(t)
	gw2 := c.startGateway("gateway-2")
	socket := startNixDaemon(t)
	top, closure := buildClosure(t)
	local := pathInfos(t, nixConfig(), "--recursive", top)
	mid := ""
	for _, p := range closure {
		if strings.Contains(p, "-mid-") {
			mid = p
		}
	}
	// Paths on stdin, as `nix-store -qR` prints them.
	cmd := nixcacheCmd(append([]string{"push"}, pushArgs(c, socket, "-stdin")...)...)
	cmd.Stdin = strings.NewReader(mustNix(t, nixConfig(), "nix-store", "--query", "--requisites", mid))
	out, err := cmd.CombinedOutput()
	if errOut := string(out); err != nil || !strings.Contains(errOut, "uploaded=2") {
		t.Errorf("push of mid (and leaf) through the first gateway, -stdin: %v\n%s", err, errOut)
	}
	_, errOut := mustNixcache(t, nil, append([]string{"push"}, pushArgs(c, socket, "-cache", gw2, top)...)...)
	if !strings.Contains(errOut, "present=2") || !strings.Contains(errOut, "uploaded=1") {
		t.Errorf("push of top through the second gateway:\n%s", errOut)
	}
	substituteAndCheck(t, c, top, closure, local)
	for _, p := range closure {
		if code := httpStatus(t, http.MethodGet, gw2+"/"+hashPart(p)+".narinfo", "", nil); code != http.StatusOK {
			t.Errorf("%s through the second gateway: %d", p, code)
		}
	}
}

// TestClientWatchStore: watch-store pushes what is built after it starts.
func TestClientWatchStore(t *testing.T) {
	c := newCluster(t)
	socket := startNixDaemon(t)
	d := startClient(t, append([]string{"watch-store"}, pushArgs(c, socket, "-poll-interval", "100ms")...)...)
	waitFor(t, 30*time.Second, "watch-store started", func() bool {
		return strings.Contains(readFile(t, d.log), "watching the store")
	})
	top, closure := buildClosure(t)
	built := time.Now()
	local := pathInfos(t, nixConfig(), "--recursive", top)
	waitFor(t, 15*time.Second, "the new closure in the cache", func() bool {
		for _, p := range closure {
			if httpStatus(t, http.MethodGet, c.URL+"/"+hashPart(p)+".narinfo", "", nil) != http.StatusOK {
				return false
			}
		}
		return true
	})
	t.Logf("closure in the cache %s after the build", time.Since(built).Round(time.Millisecond))
	substituteAndCheck(t, c, top, closure, local)
}

// TestClientUse: `nixcache use` prints, and writes, a configuration with
// which the real Nix substitutes from the cache.
func TestClientUse(t *testing.T) {
	c := newCluster(t)
	top, closure := buildClosure(t)
	mustNix(t, nixConfig("netrc-file = "+c.netrc(c.pushToken)), "nix", "copy", "--to", c.URL, top)

	out, _ := mustNixcache(t, nil, "use", "-token", c.pushToken, c.URL)
	host := strings.TrimPrefix(c.URL, "http://")
	host = host[:strings.LastIndex(host, ":")]
	for _, want := range []string{
		"extra-substituters = " + c.URL + "\n",
		"extra-trusted-public-keys = " + c.publicKey + "\n",
		"machine " + host + " login nixcache password " + c.pushToken + "\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("nixcache use prints no %q:\n%s", want, out)
		}
	}

	dir := t.TempDir()
	nixConf, netrcFile := filepath.Join(dir, "nix.conf"), filepath.Join(dir, "netrc")
	if err := os.WriteFile(nixConf, []byte("substituters =\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for range 2 { // twice: nothing is added again
		mustNixcache(t, nil, "use", "-write", "-nix-conf", nixConf, "-netrc-file", netrcFile, "-token", c.pushToken, c.URL)
	}
	conf := readFile(t, nixConf)
	if n := strings.Count(conf, "extra-substituters"); n != 1 {
		t.Errorf("nix.conf has %d extra-substituters lines:\n%s", n, conf)
	}
	if got := readFile(t, netrcFile); strings.Count(got, "machine ") != 1 {
		t.Errorf("netrc:\n%s", got)
	}
	store := filepath.Join(t.TempDir(), "store")
	mustNix(t, nixConfig(conf), "nix-store", "--store", store, "--realise", top)
	if got := pathInfos(t, nixConfig(), "--store", store, "--recursive", top); len(got) != len(closure) {
		t.Errorf("substituted %d paths with the written nix.conf, want %d", len(got), len(closure))
	}
}

// TestClientRefusedPath: a queued path the cache refuses (here: its
// reference was skipped with -skip-signed-by, and the cache has no
// upstream for it) stays queued with the cache's answer in `nixcache
// status`, and does not hold up the paths queued with it.
func TestClientRefusedPath(t *testing.T) {
	c := newCluster(t)
	socket := startNixDaemon(t)
	spool := filepath.Join(t.TempDir(), "spool.db")
	top, closure := buildClosure(t)
	leaf := ""
	for _, p := range closure {
		if strings.Contains(p, "-leaf-") {
			leaf = p
		}
	}
	dir := t.TempDir()
	mustNix(t, nixConfig(), "nix-store", "--generate-binary-cache-key", "upstream-1", filepath.Join(dir, "sec"), filepath.Join(dir, "pub"))
	mustNix(t, nixConfig(), "nix", "store", "sign", "--key-file", filepath.Join(dir, "sec"), leaf)
	blob := addRandomPaths(t, 1, 4096)[0]
	mustNixcache(t, nil, "hook", "-spool", spool, top, blob)

	startClient(t, append([]string{"daemon"}, pushArgs(c, socket, "-spool", spool, "-poll-interval", "50ms",
		"-max-backoff", "500ms", "-skip-signed-by", "upstream-1")...)...)
	waitFor(t, 30*time.Second, "the other path pushed", func() bool {
		return httpStatus(t, http.MethodGet, c.URL+"/"+hashPart(blob)+".narinfo", "", nil) == http.StatusOK
	})
	waitFor(t, 30*time.Second, "the refusal in nixcache status", func() bool {
		st := queueStatus(t, spool)
		return strings.Contains(st, "queued: 1\n  "+top+"\n") && strings.Contains(st, "is not in the cache")
	})
	if code := httpStatus(t, http.MethodGet, c.URL+"/"+hashPart(leaf)+".narinfo", "", nil); code != http.StatusNotFound {
		t.Errorf("the skipped leaf: %d, want 404", code)
	}
}

// TestClientPrivateReads: with private reads on the gateway and the index,
// the missing-paths query needs a read token too, and says so; a push,read
// token pushes and the read-only one is refused at the upload; `use`
// finds the keys with the token from the netrc file.
func TestClientPrivateReads(t *testing.T) {
	c := newCluster(t, withArgs("gateway", "-public-read=false"), withArgs("index", "-public-read=false"))
	socket := startNixDaemon(t)
	top, closure := buildClosure(t)
	local := pathInfos(t, nixConfig(), "--recursive", top)

	body := `{"paths": ["` + top + `"]}`
	if code := httpStatus(t, http.MethodPost, c.URL+"/api/v1/missing-paths", "", strings.NewReader(body)); code != http.StatusUnauthorized {
		t.Errorf("missing-paths without a token: %d, want 401", code)
	}
	resp := httpDo(t, http.MethodPost, c.URL+"/api/v1/missing-paths", c.readToken, strings.NewReader(body), nil)
	if resp.status != http.StatusOK || !strings.Contains(resp.body, top) {
		t.Errorf("missing-paths with a read token: %d %s", resp.status, resp.body)
	}

	_, errOut, err := runNixcache(t, nil, append([]string{"push"}, pushArgs(c, socket, "-token", c.readToken, "-retries", "0", top)...)...)
	if err == nil || !strings.Contains(errOut, "403 Forbidden") {
		t.Errorf("push with a read-only token: %v\n%s", err, errOut)
	}
	mustNixcache(t, nil, append([]string{"push"}, pushArgs(c, socket, top)...)...)
	store := filepath.Join(t.TempDir(), "store")
	mustNix(t, nixConfig("trusted-public-keys = "+c.publicKey, "netrc-file = "+c.netrc(c.readToken)), "nix", "copy", "--from", c.URL, "--to", store, top)
	copied := pathInfos(t, nixConfig(), "--store", store, "--recursive", top)
	for _, p := range closure {
		if copied[p].NarHash != local[p].NarHash {
			t.Errorf("%s: substituted NarHash %q, host %q", p, copied[p].NarHash, local[p].NarHash)
		}
	}

	out, _ := mustNixcache(t, nil, "use", "-netrc-file", c.netrc(c.readToken), c.URL)
	if !strings.Contains(out, "extra-trusted-public-keys = "+c.publicKey+"\n") {
		t.Errorf("nixcache use with private reads:\n%s", out)
	}
}
