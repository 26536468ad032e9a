package e2e

import (
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// staticCache is Debian's nginx serving a directory written by
// `nix copy --to file://DIR`: the upstream of the pull-through tests.
type staticCache struct {
	URL  string
	cmd  *exec.Cmd
	done chan struct{}
}

// startNginx serves root on a free loopback port until stop or the end
// of the test; extra is added to its server block.
func startNginx(t *testing.T, root, extra string) *staticCache {
	t.Helper()
	bin, err := exec.LookPath("nginx")
	if err != nil {
		bin = "/usr/sbin/nginx"
		if _, serr := os.Stat(bin); serr != nil {
			t.Fatalf("nginx is required (scripts/tools.sh installs Debian's): %v", err)
		}
	}
	dir := t.TempDir()
	addr := freeAddr(t)
	// As root, nginx's workers would run as nobody, who cannot read the
	// test's private temporary directories.
	user := ""
	if os.Geteuid() == 0 {
		user = "user root root;"
	}
	conf := fmt.Sprintf(`%[3]s
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
daemon off;
worker_processes 1;
events { worker_connections 64; }
http {
  types { text/x-nix-narinfo narinfo; }
  default_type application/octet-stream;
  access_log %[1]s/access.log;
  client_body_temp_path %[1]s/tmp;
  proxy_temp_path %[1]s/tmp;
  fastcgi_temp_path %[1]s/tmp;
  uwsgi_temp_path %[1]s/tmp;
  scgi_temp_path %[1]s/tmp;
  server {
    listen %[2]s;
    root %[4]s;
    %[5]s
  }
}
`, dir, addr, user, root, extra)
	if err := os.WriteFile(filepath.Join(dir, "nginx.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "tmp"), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-p", dir, "-c", filepath.Join(dir, "nginx.conf"))
	out, err := os.Create(filepath.Join(dir, "stderr.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start nginx: %v", err)
	}
	s := &staticCache{URL: "http://" + addr, cmd: cmd, done: make(chan struct{})}
	go func() { cmd.Wait(); out.Close(); close(s.done) }()
	t.Cleanup(s.stop)
	eventually(t, 10*time.Second, "nginx serving "+s.URL+"/nix-cache-info", func() (bool, string) {
		resp, err := http.Get(s.URL + "/nix-cache-info")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return true, ""
			}
		}
		select {
		case <-s.done:
			log, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			errs, _ := os.ReadFile(filepath.Join(dir, "stderr.log"))
			t.Fatalf("nginx exited: %s%s", errs, log)
		default:
		}
		return false, fmt.Sprintf("last error %v", err)
	})
	return s
}

// stop stops nginx (SIGTERM: fast shutdown) and waits for it.
func (s *staticCache) stop() {
	if s.cmd.Process == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
}

// binaryCacheKey makes a key pair with nix-store and returns the secret
// key's file and the public key.
func binaryCacheKey(t *testing.T, name string) (secretFile, public string) {
	t.Helper()
	dir := t.TempDir()
	secretFile, publicFile := filepath.Join(dir, "secret"), filepath.Join(dir, "public")
	mustNix(t, nixConfig(), "nix-store", "--generate-binary-cache-key", name, secretFile, publicFile)
	return secretFile, strings.TrimSpace(readFile(t, publicFile))
}

// narinfoField returns a field of the narinfo of storePath in a
// file:// cache directory.
func narinfoField(t *testing.T, cacheDir, storePath, key string) string {
	t.Helper()
	for _, line := range strings.Split(readFile(t, filepath.Join(cacheDir, hashPart(storePath)+".narinfo")), "\n") {
		if v, ok := strings.CutPrefix(line, key+": "); ok {
			return v
		}
	}
	t.Fatalf("no %s in the narinfo of %s", key, storePath)
	return ""
}

// countFiles counts the regular files under dir.
func countFiles(t *testing.T, dir string) int {
	t.Helper()
	n := 0
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			n++
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestUpstreamPullThrough: nixcache with a static upstream cache (nginx
// serving `nix copy --to file://` signed with another key) serves a
// closure that exists only upstream to a client trusting only nixcache's
// key; refuses upstream paths signed by an untrusted key or with a
// tampered NAR; and, with the upstream stopped, still serves what it
// holds and answers misses with a quick 404.
func TestUpstreamPullThrough(t *testing.T) {
	upSecret, upPublic := binaryCacheKey(t, "e2e-upstream-1")
	evilSecret, _ := binaryCacheKey(t, "e2e-evil-1")
	cacheDir := filepath.Join(t.TempDir(), "upstream")

	top, closure := buildClosure(t)
	local := pathInfos(t, nixConfig(), "--recursive", top)
	mustNix(t, nixConfig(), "nix", "copy", "--to", "file://"+cacheDir+"?compression=xz&secret-key="+upSecret, top)
	evilTop, evilClosure := buildClosure(t)
	mustNix(t, nixConfig(), "nix", "copy", "--to", "file://"+cacheDir+"?compression=xz&secret-key="+evilSecret, evilTop)
	tamperedTop, _ := buildClosure(t)
	mustNix(t, nixConfig(), "nix", "copy", "--to", "file://"+cacheDir+"?compression=xz&secret-key="+upSecret, tamperedTop)
	// Corrupt the tampered path's NAR file: its signed narinfo stays.
	narFile := filepath.Join(cacheDir, narinfoField(t, cacheDir, tamperedTop, "URL"))
	b, err := os.ReadFile(narFile)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(narFile, b, 0o644); err != nil {
		t.Fatal(err)
	}

	nginx := startNginx(t, cacheDir, "")
	c := newCluster(t, withArgs("index", "-upstream", nginx.URL, "-upstream-key", upPublic,
		"-upstream-timeout", "10s", "-upstream-negative-ttl", "30s"))
	trusting := nixConfig("trusted-public-keys = " + c.publicKey)

	// The closure is substituted through nixcache into a fresh store
	// whose only trusted key is nixcache's.
	store := filepath.Join(t.TempDir(), "store")
	start := time.Now()
	mustNix(t, trusting, "nix", "copy", "--from", c.URL, "--to", store, top)
	t.Logf("substituted %d paths through the upstream in %s", len(closure), time.Since(start).Round(time.Millisecond))
	copied := pathInfos(t, nixConfig(), "--store", store, "--recursive", top)
	remote := pathInfos(t, nixConfig(), "--store", c.URL, "--recursive", top)
	for _, p := range closure {
		if copied[p].NarHash != local[p].NarHash || copied[p].NarSize != local[p].NarSize {
			t.Errorf("%s: fresh store has %s/%d, the host %s/%d", p, copied[p].NarHash, copied[p].NarSize, local[p].NarHash, local[p].NarSize)
		}
		if !hasSigBy(remote[p].Signatures, "e2e-cache-1") || !hasSigBy(remote[p].Signatures, "e2e-upstream-1") {
			t.Errorf("%s: signatures %v, want nixcache's and the upstream's", p, remote[p].Signatures)
		}
	}
	if n := countFiles(t, filepath.Join(c.dir, "index", "nars")); n != len(closure) {
		t.Errorf("%d NAR files stored after the first closure, want %d", n, len(closure))
	}

	// Paths signed by a key the index does not trust are refused: 404,
	// saying why, and nothing of them is stored.
	for _, p := range evilClosure {
		resp := httpDo(t, "GET", c.URL+"/"+hashPart(p)+".narinfo", "", nil, nil)
		if resp.status != http.StatusNotFound || !strings.Contains(resp.body, "no valid signature by a trusted key") {
			t.Errorf("untrusted upstream path %s: %d %q, want 404 saying it is not signed by a trusted key", p, resp.status, resp.body)
		}
	}
	if _, _, err := nixRun(t, trusting, "nix", "copy", "--from", c.URL, "--to", filepath.Join(t.TempDir(), "store"), evilTop); err == nil {
		t.Errorf("nix copy of a closure signed by an untrusted upstream key succeeded")
	}
	if n := countFiles(t, filepath.Join(c.dir, "index", "nars")); n != len(closure) {
		t.Errorf("%d NAR files stored after refusing untrusted paths, want %d", n, len(closure))
	}
	// A corrupted NAR behind a valid signature is refused too.
	resp := httpDo(t, "GET", c.URL+"/"+hashPart(tamperedTop)+".narinfo", "", nil, nil)
	if resp.status != http.StatusNotFound {
		t.Errorf("path with a corrupted upstream NAR: %d %q, want 404", resp.status, resp.body)
	}
	if resp := httpDo(t, "GET", c.URL+"/"+hashPart(tamperedTop)+".narinfo", "", nil, nil); resp.status != http.StatusNotFound {
		t.Errorf("path with a corrupted upstream NAR, asked again: %d, want 404", resp.status)
	}

	// Upstream down: what the cache holds is served, misses are 404s
	// without waiting for the upstream.
	nginx.stop()
	if resp := httpDo(t, "GET", c.URL+"/"+hashPart(top)+".narinfo", "", nil, nil); resp.status != http.StatusOK {
		t.Errorf("a held path with the upstream down: %d %q, want 200", resp.status, resp.body)
	}
	mustNix(t, trusting, "nix", "copy", "--from", c.URL, "--to", filepath.Join(t.TempDir(), "store"), top)
	missing, _ := buildClosure(t)
	for i := range 3 {
		start := time.Now()
		resp := httpDo(t, "GET", c.URL+"/"+hashPart(missing)+".narinfo", "", nil, nil)
		took := time.Since(start)
		if resp.status != http.StatusNotFound {
			t.Errorf("miss %d with the upstream down: %d %q, want 404", i, resp.status, resp.body)
		}
		// Well under -upstream-timeout: nothing waits for the upstream.
		if took > 3*time.Second {
			t.Errorf("miss %d with the upstream down took %s, want under 3s", i, took)
		}
	}

	metrics := httpDo(t, "GET", "http://"+c.indexMetrics+"/metrics", "", nil, nil).body
	for _, want := range []string{
		`nixcache_upstream_lookups_total{result="fetched"} 1`,
		`nixcache_upstream_lookups_total{result="refused"} `,
		`nixcache_upstream_lookups_total{result="unreachable"} `,
		`nixcache_upstream_requests_total{code="200",kind="narinfo",upstream="` + nginx.URL + `"} `,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("index metrics lack %q", want)
		}
	}
}

// TestUpstreamSlowFetch: a fetch longer than the gateway's deadline is
// answered 503 with Retry-After and goes on in the index, so that a
// retry finds the path; the real client then substitutes it.
func TestUpstreamSlowFetch(t *testing.T) {
	upSecret, upPublic := binaryCacheKey(t, "e2e-upstream-1")
	cacheDir := filepath.Join(t.TempDir(), "upstream")
	top, closure := buildClosure(t)
	mustNix(t, nixConfig(), "nix", "copy", "--to", "file://"+cacheDir+"?compression=xz&secret-key="+upSecret, top)
	// The closure's largest NAR (about 300 kB) takes 3 s at this rate.
	nginx := startNginx(t, cacheDir, "limit_rate 100k;")
	c := newCluster(t, withArgs("index", "-upstream", nginx.URL, "-upstream-key", upPublic),
		withArgs("gateway", "-request-timeout", "1s"))

	url := c.URL + "/" + hashPart(top) + ".narinfo"
	resp := httpDo(t, "GET", url, "", nil, nil)
	if resp.status != http.StatusServiceUnavailable || resp.header.Get("Retry-After") == "" || !strings.Contains(resp.body, "being fetched from upstream") {
		t.Fatalf("first GET: %d (Retry-After %q) %q, want 503 with Retry-After saying the path is being fetched",
			resp.status, resp.header.Get("Retry-After"), resp.body)
	}
	eventually(t, 60*time.Second, "served after the first request", func() (bool, string) {
		resp := httpDo(t, "GET", url, "", nil, nil)
		return resp.status == http.StatusOK, fmt.Sprintf("%d %q", resp.status, resp.body)
	})
	store := filepath.Join(t.TempDir(), "store")
	mustNix(t, nixConfig("trusted-public-keys = "+c.publicKey), "nix", "copy", "--from", c.URL, "--to", store, top)
	if got := pathInfos(t, nixConfig(), "--store", store, "--recursive", top); len(got) != len(closure) {
		t.Errorf("fresh store has %d paths of the closure, want %d", len(got), len(closure))
	}
}
