package e2e

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The tests in this file serve the host's own store (-local-store): paths
// built on this machine are substituted from the cache with nothing pushed.
// The index reads the store through a real nix-daemon of its own (on a
// private socket; it serves the host's /nix/store and database).

// startNixDaemon starts Debian's nix-daemon on a private socket and waits
// until it accepts connections; it is stopped when the test ends.
func startNixDaemon(t *testing.T) string {
	t.Helper()
	return startNixDaemonOn(t, filepath.Join(t.TempDir(), "socket"))
}

// startNixDaemonOn is startNixDaemon on the given socket path; a daemon
// already listening there is used as it is.
func startNixDaemonOn(t *testing.T, socket string) string {
	t.Helper()
	return startNixDaemonWith(t, socket, nixConfig())
}

// startNixDaemonWith is startNixDaemonOn with the daemon's configuration.
func startNixDaemonWith(t *testing.T, socket, config string) string {
	t.Helper()
	if conn, err := net.Dial("unix", socket); err == nil {
		conn.Close()
		return socket
	}
	dir := t.TempDir()
	logs, err := os.Create(filepath.Join(dir, "nix-daemon.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("nix-daemon")
	cmd.Env = append(os.Environ(), "NIX_CONFIG="+config, "NIX_DAEMON_SOCKET_PATH="+socket,
		"HOME="+dir, "XDG_CACHE_HOME="+filepath.Join(dir, ".cache"))
	cmd.Stdout, cmd.Stderr = logs, logs
	// Its own process group: the processes it forks per connection go too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start nix-daemon: %v", err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		logs.Close()
		close(exited)
	}()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
	})
	deadline := time.After(20 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if conn, err := net.Dial("unix", socket); err == nil {
			conn.Close()
			return socket
		}
		select {
		case <-exited:
			t.Fatalf("nix-daemon exited:\n%s", readFile(t, filepath.Join(dir, "nix-daemon.log")))
		case <-deadline:
			t.Fatalf("nix-daemon does not listen on %s after 20s", socket)
		case <-tick.C:
		}
	}
}

// withLocalStore serves the host's store through the daemon on socket.
func withLocalStore(socket string) clusterOption {
	return withArgs("index", "-local-store", "-nix-daemon-socket", socket)
}

// TestLocalStoreSubstitute: with nothing pushed, a fresh store substitutes
// a closure built on the host, trusting only the cache's key; a client
// trusting another key refuses it.
func TestLocalStoreSubstitute(t *testing.T) {
	c := newCluster(t, withLocalStore(startNixDaemon(t)))
	top, closure := buildClosure(t)
	local := pathInfos(t, nixConfig(), "--recursive", top)

	remote := pathInfos(t, nixConfig(), "--store", c.URL, "--recursive", top)
	if len(remote) != len(closure) {
		t.Fatalf("cache has %d paths of the closure, want %d", len(remote), len(closure))
	}
	for _, p := range closure {
		r := remote[p]
		if r.NarHash != local[p].NarHash || r.NarSize != local[p].NarSize {
			t.Errorf("%s: cache has %s/%d, host %s/%d", p, r.NarHash, r.NarSize, local[p].NarHash, local[p].NarSize)
		}
		if !hasSigBy(r.Signatures, "e2e-cache-1") {
			t.Errorf("%s: no signature by the cache key: %v", p, r.Signatures)
		}
	}
	ni := httpDo(t, "GET", c.URL+"/"+hashPart(top)+".narinfo", "", nil, nil)
	for _, want := range []string{"Compression: none\n", "URL: nar/" + hashPart(top) + "-"} {
		if !strings.Contains(ni.body, want) {
			t.Errorf("narinfo of a local path lacks %q:\n%s", want, ni.body)
		}
	}

	substituteAndCheck(t, c, top, closure, local)

	store2 := filepath.Join(t.TempDir(), "store")
	mustNix(t, nixConfig("substituters = "+c.URL, "trusted-public-keys = "+c.publicKey), "nix-store", "--store", store2, "--realise", top)
	realised := pathInfos(t, nixConfig(), "--store", store2, "--recursive", top)
	for _, p := range closure {
		if realised[p].NarHash != local[p].NarHash {
			t.Errorf("%s: realised NarHash %q, host %q", p, realised[p].NarHash, local[p].NarHash)
		}
	}

	dir := t.TempDir()
	mustNix(t, nixConfig(), "nix-store", "--generate-binary-cache-key", "other-1", filepath.Join(dir, "sec"), filepath.Join(dir, "pub"))
	otherPub := strings.TrimSpace(readFile(t, filepath.Join(dir, "pub")))
	_, stderr, err := nixRun(t, nixConfig("trusted-public-keys = "+otherPub), "nix", "copy", "--from", c.URL, "--to", filepath.Join(t.TempDir(), "store"), top)
	if err == nil || !strings.Contains(stderr, "lacks a valid signature") {
		t.Errorf("nix copy --from trusting another key: %v, want it refused for the signature:\n%s", err, stderr)
	}
}

// waitStatus polls url until it answers want, and fails the test if that
// takes longer than within.
func waitStatus(t *testing.T, url string, want int, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := time.After(within)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	last := 0
	for {
		if last = httpStatus(t, "GET", url, "", nil); last == want {
			return time.Since(start)
		}
		select {
		case <-deadline:
			t.Fatalf("GET %s: still %d after %s, want %d", url, last, within, want)
		case <-tick.C:
		}
	}
}

// TestLocalStoreFollowsHost: a path built while the cache runs is served
// within 5 s, and one deleted from the host's store is 404 within 5 s.
func TestLocalStoreFollowsHost(t *testing.T) {
	c := newCluster(t, withLocalStore(startNixDaemon(t)))
	top, closure := buildClosure(t)
	for _, p := range closure {
		d := waitStatus(t, c.URL+"/"+hashPart(p)+".narinfo", http.StatusOK, 5*time.Second)
		t.Logf("%s served %s after its build", filepath.Base(p), d.Round(time.Millisecond))
	}
	nar := narURL(t, c, top)
	if status := httpStatus(t, "GET", nar, "", nil); status != http.StatusOK {
		t.Fatalf("NAR of %s: %d", top, status)
	}

	mustNix(t, nixConfig(), "nix-store", "--delete", closure[0], closure[1], closure[2])
	for _, p := range closure {
		if _, err := os.Lstat(p); err == nil {
			t.Fatalf("%s is still on disk after nix-store --delete", p)
		}
	}
	for _, p := range closure {
		d := waitStatus(t, c.URL+"/"+hashPart(p)+".narinfo", http.StatusNotFound, 5*time.Second)
		t.Logf("%s 404 %s after its deletion", filepath.Base(p), d.Round(time.Millisecond))
	}
	if status := httpStatus(t, "GET", nar, "", nil); status != http.StatusNotFound {
		t.Errorf("NAR of deleted %s: %d, want 404", top, status)
	}
}

// withoutHostCopies has the index keep no compressed copies of the host's
// NARs: they are always dumped.
func withoutHostCopies() clusterOption {
	return withArgs("index", "-host-nar-max-size", "0")
}

// withGatewayDump has the gateway dump the host's NARs itself
// (-local-store-dir), with its caches as deployed.
func withGatewayDump() clusterOption {
	return withArgs("gateway", append([]string{"-local-store-dir", "/nix/store"}, cachingGateway...)...)
}

// TestLocalStoreDumpedByGateway: a gateway on the host (-local-store-dir)
// dumps the host's NARs itself. A fresh store substitutes the closure
// trusting only the cache's key; the index streams no NAR yet counts the
// downloads (the gateway reports them); a NAR downloaded again costs no
// index call; paths deleted from the host are 404, NARs included, within
// 5 s.
func TestLocalStoreDumpedByGateway(t *testing.T) {
	// No compressed copies (hostnar_test.go): the narinfos keep naming
	// the dumped NARs.
	c := newCluster(t, withLocalStore(startNixDaemon(t)), withGatewayDump(), withoutHostCopies())
	top, closure := buildClosure(t)
	local := pathInfos(t, nixConfig(), "--recursive", top)
	for _, p := range closure {
		waitStatus(t, c.URL+"/"+hashPart(p)+".narinfo", http.StatusOK, 5*time.Second)
	}

	substituteAndCheck(t, c, top, closure, local)

	index := "http://" + c.indexMetrics + "/metrics"
	const series = `grpc_server_handled_total{grpc_code="OK",grpc_method="%s",grpc_service="nixcache.index.v1.IndexService",grpc_type="%s"}`
	if n := metric(t, index, fmt.Sprintf(series, "GetNar", "server_stream")); n != 0 {
		t.Errorf("the index streamed %v NARs; the gateway should have dumped them", n)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		stats := messages(t, c.admin("GetStats", ""))
		if got := stats[0]["narDownloads"]; got == fmt.Sprint(len(closure)) {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("GetStats narDownloads %v, want %d (one per path): %v", got, len(closure), stats)
		}
	}

	nar := narURL(t, c, top)
	lookups := fmt.Sprintf(series, "GetPathInfo", "unary")
	before := metric(t, index, lookups)
	for range 3 {
		if r := httpDo(t, "GET", nar, "", nil, nil); r.status != http.StatusOK || uint64(len(r.body)) != local[top].NarSize {
			t.Fatalf("GET %s again: %d, %d bytes, want 200, %d", nar, r.status, len(r.body), local[top].NarSize)
		}
	}
	if n := metric(t, index, lookups) - before; n != 0 {
		t.Errorf("3 more downloads of a NAR asked the index %v times, want 0", n)
	}

	mustNix(t, nixConfig(), "nix-store", "--delete", closure[0], closure[1], closure[2])
	for _, p := range closure {
		if _, err := os.Lstat(p); err == nil {
			t.Fatalf("%s is still on disk after nix-store --delete", p)
		}
	}
	// Gone from disk, the NAR is refused at once, kept answer or not.
	if status := httpStatus(t, "GET", nar, "", nil); status != http.StatusNotFound {
		t.Errorf("NAR of deleted %s: %d, want 404", top, status)
	}
	for _, p := range closure {
		waitStatus(t, c.URL+"/"+hashPart(p)+".narinfo", http.StatusNotFound, 5*time.Second)
	}
}

// narURL returns the NAR URL the narinfo of storePath names.
func narURL(t *testing.T, c *cluster, storePath string) string {
	t.Helper()
	resp := httpDo(t, "GET", c.URL+"/"+hashPart(storePath)+".narinfo", "", nil, nil)
	for _, line := range strings.Split(resp.body, "\n") {
		if u, ok := strings.CutPrefix(line, "URL: "); ok {
			return c.URL + "/" + u
		}
	}
	t.Fatalf("narinfo of %s has no URL:\n%s", storePath, resp.body)
	return ""
}

// bigTree is a derivation whose output has every kind of node and a file
// larger than 1 GiB (followed by another file, so that offsets past 1 GiB
// are exercised both ways).
const bigTree = `{ seed }: derivation {
  name = "big-tree-${seed}";
  inherit seed;
  system = builtins.currentSystem;
  builder = "/bin/sh";
  PATH = "/usr/bin:/bin";
  args = [ "-c" ''
    mkdir -p $out/bin $out/empty $out/share/empty-too
    printf '#!/bin/sh\necho hi\n' > $out/bin/run
    chmod 755 $out/bin/run
    ln -s bin/run $out/run-link
    ln -s /nonexistent/target $out/dangling
    head -c 1073741924 /dev/urandom > $out/share/blob
    echo "after the blob ${seed}" > $out/share/z-after
    touch $out/empty-file
  '' ];
}`

// TestLocalStoreBigTree: executable bits, symlinks, empty directories and
// a file larger than 1 GiB survive the round trip byte for byte (dumped by
// a gateway with -local-store-dir), and a range past 1 GiB is served right,
// streamed from the index and dumped by the gateway.
func TestLocalStoreBigTree(t *testing.T) {
	// No compressed copy of the 1 GiB path (hostnar_test.go).
	c := newCluster(t, withLocalStore(startNixDaemon(t)), withoutHostCopies())
	start := time.Now()
	out := strings.TrimSpace(mustNix(t, nixConfig(), "nix-build", "-E", bigTree, "--argstr", "seed", randomHex(t, 4), "--no-out-link"))
	t.Cleanup(func() { nixRun(t, nixConfig(), "nix-store", "--delete", out) })
	t.Logf("built %s in %s", out, time.Since(start).Round(time.Millisecond))
	hostSum, hostSize := dumpSum(t, out, 0, -1)

	// A range that starts inside the blob, past 1 GiB, and ends in the
	// entry after it.
	const from = 1<<30 + 100
	n := int64(hostSize) - from - 40
	resp := httpDo(t, "GET", narURL(t, c, out), "", nil, http.Header{"Range": {fmt.Sprintf("bytes=%d-%d", from, from+n-1)}})
	wantSum, _ := dumpSum(t, out, from, n)
	if got := sha256.Sum256([]byte(resp.body)); resp.status != http.StatusPartialContent || hex.EncodeToString(got[:]) != wantSum {
		t.Errorf("range from %d: status %d, %d bytes; want 206 and bytes %d to %d of nix-store --dump", from, resp.status, len(resp.body), from, from+n)
	}

	// A gateway that dumps the host's NARs itself (large files with
	// sendfile) serves the same range, and the substitution below.
	dumper := c.startGateway("dumper", "-local-store-dir", "/nix/store")
	dumpURL := dumper + strings.TrimPrefix(narURL(t, c, out), c.URL)
	resp = httpDo(t, "GET", dumpURL, "", nil, http.Header{"Range": {fmt.Sprintf("bytes=%d-%d", from, from+n-1)}})
	if got := sha256.Sum256([]byte(resp.body)); resp.status != http.StatusPartialContent || hex.EncodeToString(got[:]) != wantSum {
		t.Errorf("gateway dump, range from %d: status %d, %d bytes; want 206 and bytes %d to %d of nix-store --dump", from, resp.status, len(resp.body), from, from+n)
	}

	start = time.Now()
	store := filepath.Join(t.TempDir(), "store")
	mustNix(t, nixConfig("trusted-public-keys = "+c.publicKey), "nix", "copy", "--from", dumper, "--to", store, out)
	t.Logf("substituted %d NAR bytes in %s", hostSize, time.Since(start).Round(time.Millisecond))
	gotSum, gotSize := dumpSum(t, filepath.Join(store, strings.TrimPrefix(out, "/")), 0, -1)
	if gotSum != hostSum || gotSize != hostSize {
		t.Errorf("substituted tree dumps to %d bytes, sha256 %s; the host's to %d bytes, sha256 %s", gotSize, gotSum, hostSize, hostSum)
	}
	// Spot checks of what the dump comparison covers, for a readable failure.
	copied := filepath.Join(store, strings.TrimPrefix(out, "/"))
	if fi, err := os.Stat(filepath.Join(copied, "bin", "run")); err != nil || fi.Mode()&0o100 == 0 {
		t.Errorf("bin/run: %v, mode %v; want it executable", err, fi)
	}
	if target, err := os.Readlink(filepath.Join(copied, "dangling")); err != nil || target != "/nonexistent/target" {
		t.Errorf("dangling symlink: %q, %v", target, err)
	}
	if entries, err := os.ReadDir(filepath.Join(copied, "share", "empty-too")); err != nil || len(entries) != 0 {
		t.Errorf("empty directory: %v, %v", entries, err)
	}
}

// dumpSum returns the sha256 (hex) of n bytes (all: n < 0) of the NAR
// nix-store --dump writes of path, from offset, and the size of the whole
// dump; it streams, never holding the dump in memory.
func dumpSum(t *testing.T, path string, offset, n int64) (string, uint64) {
	t.Helper()
	cmd := exec.Command("nix-store", "--dump", path)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	skipped, err := io.CopyN(io.Discard, stdout, offset)
	if err != nil {
		t.Fatalf("nix-store --dump %s: skip %d bytes: %v", path, offset, err)
	}
	h := sha256.New()
	var r io.Reader = stdout
	if n >= 0 {
		r = io.LimitReader(stdout, n)
	}
	hashed, err := io.Copy(h, r)
	if err != nil {
		t.Fatal(err)
	}
	rest, err := io.Copy(io.Discard, stdout)
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("nix-store --dump %s: %v\n%s", path, err, stderr.String())
	}
	return hex.EncodeToString(h.Sum(nil)), uint64(skipped + hashed + rest)
}

// TestLocalStorePushedAndLocal: a path both pushed and local is served
// once, as pushed, beside local-only paths; a restart without -local-store
// forgets the local paths and keeps the pushed one.
func TestLocalStorePushedAndLocal(t *testing.T) {
	c := newCluster(t)
	top, closure := buildClosure(t)
	leaf := closure[0]
	for _, p := range closure {
		if strings.Contains(p, "-leaf-") {
			leaf = p
		}
	}
	mustNix(t, nixConfig("netrc-file = "+c.netrc(c.pushToken)), "nix", "copy", "--to", c.URL+"?compression=zstd", leaf)

	c.stop("index")
	c.extraArgs["index"] = withLocalStoreArgs(startNixDaemon(t))
	c.start("index")

	for p, want := range map[string]string{leaf: "Compression: zstd\n", top: "Compression: none\n"} {
		ni := httpDo(t, "GET", c.URL+"/"+hashPart(p)+".narinfo", "", nil, nil)
		if ni.status != http.StatusOK || !strings.Contains(ni.body, want) {
			t.Errorf("narinfo of %s: %d, want %q in\n%s", p, ni.status, want, ni.body)
		}
	}
	remote := pathInfos(t, nixConfig(), "--store", c.URL, "--recursive", top)
	if len(remote) != len(closure) {
		t.Errorf("nix path-info --recursive lists %d paths, want %d: %v", len(remote), len(closure), remote)
	}
	substituteAndCheck(t, c, top, closure, pathInfos(t, nixConfig(), "--recursive", top))

	c.stop("index")
	c.extraArgs["index"] = nil
	c.start("index")
	if status := httpStatus(t, "GET", c.URL+"/"+hashPart(top)+".narinfo", "", nil); status != http.StatusNotFound {
		t.Errorf("local-only path after a restart without -local-store: %d, want 404", status)
	}
	if status := httpStatus(t, "GET", c.URL+"/"+hashPart(leaf)+".narinfo", "", nil); status != http.StatusOK {
		t.Errorf("pushed path after a restart without -local-store: %d, want 200", status)
	}
}

func withLocalStoreArgs(socket string) []string {
	c := &cluster{extraArgs: map[string][]string{}}
	withLocalStore(socket)(c)
	return c.extraArgs["index"]
}

// TestLocalStoreSignerDown: a local path the signer could not sign is 503
// (never served unsigned), and served signed once the signer is back.
func TestLocalStoreSignerDown(t *testing.T) {
	c := newCluster(t, withLocalStore(startNixDaemon(t)))
	c.stop("signer")
	top, _ := buildClosure(t)
	url := c.URL + "/" + hashPart(top) + ".narinfo"
	resp := httpDo(t, "GET", url, "", nil, nil)
	if resp.status != http.StatusServiceUnavailable || resp.header.Get("Retry-After") == "" {
		t.Errorf("narinfo of an unsigned local path: %d, Retry-After %q; want 503 with Retry-After", resp.status, resp.header.Get("Retry-After"))
	}
	c.start("signer")
	d := waitStatus(t, url, http.StatusOK, 30*time.Second)
	t.Logf("served %s after the signer's restart", d.Round(time.Millisecond))
	store := filepath.Join(t.TempDir(), "store")
	mustNix(t, nixConfig("trusted-public-keys = "+c.publicKey), "nix", "copy", "--from", c.URL, "--to", store, top)
}

// TestLocalStoreZstd: with -zstd-local, a client that asks for zstd gets
// the NAR compressed on the fly; Nix, which does not ask, still substitutes.
func TestLocalStoreZstd(t *testing.T) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("curl is not installed")
	}
	c := newCluster(t, withLocalStore(startNixDaemon(t)), withArgs("gateway", "-zstd-local"))
	top, closure := buildClosure(t)
	for _, p := range closure {
		dir := t.TempDir()
		cmd := exec.Command(curl, "-sSf", "--compressed", "-D", filepath.Join(dir, "headers"), "-o", filepath.Join(dir, "body"), narURL(t, c, p))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("curl --compressed: %v\n%s", err, out)
		}
		if h := strings.ToLower(readFile(t, filepath.Join(dir, "headers"))); !strings.Contains(h, "content-encoding: zstd") {
			t.Errorf("curl --compressed got no zstd:\n%s", h)
		}
		want, _ := dumpSum(t, p, 0, -1)
		got := sha256.Sum256([]byte(readFile(t, filepath.Join(dir, "body"))))
		if hex.EncodeToString(got[:]) != want {
			t.Errorf("%s: the decoded NAR differs from nix-store --dump", p)
		}
	}
	store := filepath.Join(t.TempDir(), "store")
	mustNix(t, nixConfig("trusted-public-keys = "+c.publicKey), "nix", "copy", "--from", c.URL, "--to", store, top)
	assertSameTree(t, top, filepath.Join(store, strings.TrimPrefix(top, "/")))
}

// TestLocalStoreStartupErrors: a store directory or daemon socket that
// cannot be used stops the index at once with a message naming the flag.
func TestLocalStoreStartupErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"missing store directory", []string{"-store-dir", filepath.Join(dir, "no-store"), "-nix-daemon-socket", filepath.Join(dir, "no-socket")}, "-store-dir"},
		{"missing socket", []string{"-nix-daemon-socket", filepath.Join(dir, "no-socket")}, "-nix-daemon-socket"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// No metrics listener: the default 127.0.0.1:9111 may be taken by a
			// cache running on this host (make run), which must not fail the test.
			args := append([]string{"-listen", freeAddr(t), "-insecure-tcp", "-metrics-listen", "", "-data-dir", t.TempDir(), "-local-store"}, tt.args...)
			cmd := exec.Command(filepath.Join(binDir, "nixcache-index"), args...)
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case err := <-done:
				if err == nil || !strings.Contains(out.String(), tt.want) {
					t.Errorf("nixcache-index %s: %v, printed %q; want a failure naming %s", strings.Join(args, " "), err, out.String(), tt.want)
				}
			case <-time.After(20 * time.Second):
				cmd.Process.Kill()
				<-done
				t.Fatalf("nixcache-index did not stop within 20s:\n%s", out.String())
			}
		})
	}
}
