package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nixcache/nixcache/nix/compression"
	"github.com/nixcache/nixcache/nix/narinfo"
	"github.com/nixcache/nixcache/nix/nixhash"
)

// TestCrashConsistency kills (SIGKILL) the index, the gateway or the
// signer at random moments while 8 real `nix copy --to` pushes run, each
// of fresh closures built with the real Nix, restarts the service and
// repeats. Pushes that fail because of a kill are retried until they
// succeed. After every restart: every narinfo served (of a sample of the
// paths pushed or being pushed) has its NAR, whose hashes match; every
// path of a push that succeeded is served; the index's startup check found
// no record without its file. At the end: every narinfo PUT the gateway
// answered 2xx is served; everything substitutes into a fresh store
// trusting only the cache's key, identical to the source; no temporary
// file is left; a clean restart's startup check finds nothing to repair.
//
// NIXCACHE_CRASH_KILLS sets the number of kills (20; make test-crash-long:
// 200), NIXCACHE_CRASH_SEED the random seed (logged, to replay a run).
func TestCrashConsistency(t *testing.T) {
	start := time.Now()
	kills := 20
	if v := os.Getenv("NIXCACHE_CRASH_KILLS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("NIXCACHE_CRASH_KILLS=%q: want a positive number", v)
		}
		kills = n
	}
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("NIXCACHE_CRASH_SEED"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("NIXCACHE_CRASH_SEED=%q: want a number", v)
		}
		seed = n
	}
	t.Logf("crash test: %d kills, seed %d (NIXCACHE_CRASH_SEED=%d replays the kill schedule)", kills, seed, seed)
	// The kill schedule has its own generator, so that a seed replays it
	// whatever the samples drew.
	rng := rand.New(rand.NewPCG(seed, 0))
	sampleRng := rand.New(rand.NewPCG(seed, 1))

	c := newCluster(t)
	// download-attempts = 1: Nix 2.8 hangs for good when it retries an
	// upload itself (curl waits for a body it never re-sends: NixOS/nix
	// #15023, fixed in 2.33); the pushers retry whole pushes instead.
	w := &crashWorld{t: t, c: c, pushed: map[string]bool{},
		pushConfig: nixConfig("netrc-file = "+c.netrc(c.pushToken), "download-attempts = 1"),
		seedPrefix: "crash-" + randomHex(t, 4)}

	// 8 pushers, each pushing fresh closures one after another while the
	// kills go on (so that there is always work in flight), retrying each
	// until it succeeds.
	const pushers = 8
	killing, stopPushing := context.WithCancel(context.Background())
	defer stopPushing()
	errs := make(chan error, pushers)
	for i := range pushers {
		go func() { errs <- w.pusher(killing, i) }()
	}

	killed := map[string]int{}
	orphans := 0
	services := []string{"index", "gateway", "signer"}
	for k := 1; k <= kills; k++ {
		// A random moment: 50 ms to 1.2 s after the last restart.
		delay := time.Duration(50+rng.IntN(1150)) * time.Millisecond
		select {
		case <-time.After(delay):
		case err := <-errs:
			t.Fatalf("a pusher stopped during the kills: %v", err)
		}
		svc := services[rng.IntN(len(services))]
		c.kill(svc)
		killed[svc]++
		c.start(svc)
		w.waitGatewayReady()
		if svc == "index" {
			m := w.startupCheckMetrics()
			if m["quarantined_path"] != 0 || m["dropped_nar_file"] != 0 {
				t.Errorf("kill %d: the index's startup check found records without their file: %v", k, m)
			}
			orphans += m["orphan"]
		}
		w.sampleCheck(sampleRng, fmt.Sprintf("after kill %d (%s)", k, svc))
		if t.Failed() {
			t.Fatalf("stopping after kill %d of %d", k, kills)
		}
	}
	stopPushing()
	for range pushers {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	w.mu.Lock()
	t.Logf("crash test: %d kills (%v) in %s; %d closures pushed, %d push attempts failed and were retried; %d orphan NAR files moved aside by startup checks",
		kills, killed, time.Since(start).Round(time.Millisecond), len(w.closures), w.failedPushes, orphans)
	closures := w.closures
	w.mu.Unlock()

	// Every narinfo whose PUT the gateway answered 2xx is served.
	acked := gatewayAckedNarinfos(t, filepath.Join(c.dir, "logs", "gateway.log"))
	if len(acked) == 0 {
		t.Fatal("the gateway log shows no successful narinfo PUT")
	}
	for h := range acked {
		if code := w.narinfoStatus(h); code != http.StatusOK {
			t.Errorf("narinfo %s was acknowledged to a pusher but is now %d", h, code)
		}
	}

	// A clean restart: its startup check has nothing to repair, and
	// nothing is left in the temporary directories.
	c.stopAll()
	c.startAll()
	if m := w.startupCheckMetrics(); m["quarantined_path"]+m["dropped_nar_file"]+m["orphan"]+m["leftover_uploads"] != 0 {
		t.Errorf("startup check after a clean restart: %v, want nothing to repair", m)
	}
	for _, dir := range []string{"tmp", filepath.Join("artifacts", "tmp")} {
		left, err := os.ReadDir(filepath.Join(c.dir, "index", dir))
		if err != nil || len(left) != 0 {
			t.Errorf("index/%s holds %d entries (%v), want none", dir, len(left), err)
		}
	}
	w.waitGatewayReady()
	w.sampleCheck(sampleRng, "after the clean restart")

	// Everything substitutes into a fresh store trusting only our key,
	// verifies, and is the same tree as the source.
	store := filepath.Join(t.TempDir(), "store")
	var tops []string
	for _, cl := range closures {
		tops = append(tops, cl.top)
	}
	mustNix(t, nixConfig("trusted-public-keys = "+c.publicKey), "nix", append([]string{"copy", "--from", c.URL, "--to", store}, tops...)...)
	var all []string
	for _, cl := range closures {
		all = append(all, cl.paths...)
	}
	mustNix(t, nixConfig(), "nix-store", append([]string{"--store", store, "--verify-path"}, all...)...)
	host := pathInfos(t, nixConfig(), append([]string{"--recursive"}, tops...)...)
	copied := pathInfos(t, nixConfig(), append([]string{"--store", store, "--recursive"}, tops...)...)
	for _, p := range all {
		if copied[p].NarHash == "" || copied[p].NarHash != host[p].NarHash || copied[p].NarSize != host[p].NarSize {
			t.Errorf("%s: substituted %s/%d, host %s/%d", p, copied[p].NarHash, copied[p].NarSize, host[p].NarHash, host[p].NarSize)
		}
	}
	// And byte for byte, for a sample (a dump each is slow at hundreds).
	for _, i := range sampleRng.Perm(len(closures))[:min(8, len(closures))] {
		for _, p := range closures[i].paths {
			assertSameTree(t, p, filepath.Join(store, strings.TrimPrefix(p, "/")))
		}
	}
	t.Logf("crash test: %d paths of %d closures substituted and verified; total %s", len(all), len(closures), time.Since(start).Round(time.Millisecond))
}

// crashWorld is what the crash test's pushers and checks share.
type crashWorld struct {
	t          *testing.T
	c          *cluster
	pushConfig string
	seedPrefix string // makes the closures' store paths unique to this run

	mu           sync.Mutex
	closures     []crashClosure  // built, pushed or being pushed
	pushed       map[string]bool // paths of successful pushes
	failedPushes int
}

type crashClosure struct {
	top   string
	paths []string
}

// compressions the pushers cycle through; odd pushers also upload NAR
// listings, which the index stores as artifacts.
var crashCompressions = []string{"xz", "zstd", "none", "bzip2"}

// pusher builds and pushes closures until ctx is done, then returns; each
// push is retried until it succeeds.
func (w *crashWorld) pusher(ctx context.Context, i int) error {
	query := "?compression=" + crashCompressions[i%len(crashCompressions)]
	if i%2 == 1 {
		query += "&write-nar-listing=true"
	}
	for k := 0; ctx.Err() == nil; k++ {
		cl, err := w.build(fmt.Sprintf("%s-%d-%d", w.seedPrefix, i, k))
		if err != nil {
			return err
		}
		w.mu.Lock()
		w.closures = append(w.closures, cl)
		w.mu.Unlock()
		const maxAttempts = 60
		for attempt := 1; ; attempt++ {
			stderr, err := w.push(w.c.URL+query, cl.top)
			if err == nil {
				break
			}
			if errors.Is(err, context.DeadlineExceeded) {
				return fmt.Errorf("pusher %d: nix copy of %s hung for %s\n%s", i, cl.top, pushDeadline, stderr)
			}
			if attempt == maxAttempts {
				return fmt.Errorf("pusher %d: nix copy of %s failed %d times, last: %w\n%s", i, cl.top, attempt, err, stderr)
			}
			w.mu.Lock()
			w.failedPushes++
			w.mu.Unlock()
		}
		// A push that returned success is complete: every path is there
		// (the gateway may be down a moment: a kill is no excuse for a
		// 404, only for no answer).
		for _, p := range cl.paths {
			if code := w.narinfoStatus(hashPart(p)); code != http.StatusOK {
				return fmt.Errorf("pusher %d: nix copy of %s succeeded but %s is %d", i, cl.top, p, code)
			}
		}
		w.mu.Lock()
		for _, p := range cl.paths {
			w.pushed[p] = true
		}
		w.mu.Unlock()
	}
	return nil
}

// pushDeadline bounds one nix copy: a push of a closure takes seconds.
const pushDeadline = 2 * time.Minute

// push runs one nix copy --to, killed if it lasts beyond pushDeadline.
func (w *crashWorld) push(url, top string) (stderr string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), pushDeadline)
	defer cancel()
	home := w.t.TempDir()
	cmd := exec.CommandContext(ctx, "nix", "copy", "--to", url, top)
	cmd.Env = append(os.Environ(), "NIX_CONFIG="+w.pushConfig, "HOME="+home, "XDG_CACHE_HOME="+filepath.Join(home, ".cache"))
	var errb bytes.Buffer
	cmd.Stderr = &errb
	err = cmd.Run()
	if ctx.Err() != nil {
		err = ctx.Err()
	}
	return errb.String(), err
}

// build builds a closure (1 MiB of random data in its leaf) with seed.
func (w *crashWorld) build(seed string) (crashClosure, error) {
	out, stderr, err := nixRun(w.t, nixConfig(), "nix-build", "testdata/closure.nix",
		"--argstr", "seed", seed, "--arg", "randomBytes", "1048576", "--no-out-link")
	if err != nil {
		return crashClosure{}, fmt.Errorf("nix-build %s: %w\n%s", seed, err, stderr)
	}
	top := strings.TrimSpace(out)
	out, stderr, err = nixRun(w.t, nixConfig(), "nix-store", "--query", "--requisites", top)
	if err != nil {
		return crashClosure{}, fmt.Errorf("nix-store --query %s: %w\n%s", top, err, stderr)
	}
	return crashClosure{top: top, paths: strings.Fields(out)}, nil
}

// narinfoStatus is the status of GET /<hash>.narinfo, asked again while
// the gateway does not answer or answers 5xx (a service restarting), for
// up to 30 s.
func (w *crashWorld) narinfoStatus(hash string) int {
	code, _ := w.get("/" + hash + ".narinfo")
	return code
}

// get fetches a path of the cache, retrying while there is no answer or a
// 5xx, for up to 30 s; it returns the last status (0: no answer).
func (w *crashWorld) get(path string) (int, []byte) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(w.c.URL + path)
		if err == nil {
			body, rerr := io.ReadAll(resp.Body)
			resp.Body.Close()
			if rerr == nil && resp.StatusCode < 500 {
				return resp.StatusCode, body
			}
			if time.Now().After(deadline) {
				return resp.StatusCode, body
			}
		} else if time.Now().After(deadline) {
			return 0, nil
		}
		// Poll again shortly: the service is being restarted.
		time.Sleep(50 * time.Millisecond)
	}
}

// waitGatewayReady polls /readyz until the gateway reaches the index and
// the signer.
func (w *crashWorld) waitGatewayReady() {
	w.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(w.c.URL + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			w.t.Fatalf("gateway not ready 30 s after a restart: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// sampleCheck fetches the narinfo of up to 12 random paths of the closures
// built so far: a path of a successful push must be served; a narinfo
// served must have its NAR at its URL, with the FileHash, FileSize,
// NarHash and NarSize it states.
func (w *crashWorld) sampleCheck(rng *rand.Rand, when string) {
	w.t.Helper()
	w.mu.Lock()
	var all []string
	for _, cl := range w.closures {
		all = append(all, cl.paths...)
	}
	pushed := make(map[string]bool, len(w.pushed))
	for p := range w.pushed {
		pushed[p] = true
	}
	w.mu.Unlock()
	rng.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
	for _, p := range all[:min(12, len(all))] {
		code, body := w.get("/" + hashPart(p) + ".narinfo")
		switch {
		case code == http.StatusNotFound && !pushed[p]:
			continue // not pushed yet
		case code != http.StatusOK:
			w.t.Errorf("%s: narinfo of %s (pushed: %v): %d %s", when, p, pushed[p], code, body)
			continue
		}
		ni, err := narinfo.Parse(strings.NewReader(string(body)), "/nix/store")
		if err != nil {
			w.t.Errorf("%s: narinfo of %s: %v\n%s", when, p, err, body)
			continue
		}
		if err := w.checkNar(ni); err != nil {
			w.t.Errorf("%s: %s: %v", when, p, err)
		}
	}
}

// checkNar downloads the NAR file a narinfo names and compares it, and the
// NAR it decompresses to, with the narinfo.
func (w *crashWorld) checkNar(ni *narinfo.NarInfo) error {
	code, file := w.get("/" + ni.URL)
	if code != http.StatusOK {
		return fmt.Errorf("narinfo served but its NAR %s is %d", ni.URL, code)
	}
	sum := sha256.Sum256(file)
	if got := (nixhash.Hash{Algo: nixhash.SHA256, Digest: sum[:]}); !got.Equal(ni.FileHash) {
		return fmt.Errorf("NAR file %s hashes to %s, narinfo says FileHash %s", ni.URL, got, ni.FileHash)
	}
	if uint64(len(file)) != ni.FileSize {
		return fmt.Errorf("NAR file %s is %d bytes, narinfo says FileSize %d", ni.URL, len(file), ni.FileSize)
	}
	dec, err := compression.NewReader(ni.EffectiveCompression(), strings.NewReader(string(file)))
	if err != nil {
		return fmt.Errorf("decompress %s: %w", ni.URL, err)
	}
	defer dec.Close()
	h := sha256.New()
	n, err := io.Copy(h, dec)
	if err != nil {
		return fmt.Errorf("decompress %s: %w", ni.URL, err)
	}
	if got := nixhash.FromHasher(nixhash.SHA256, h); !got.Equal(ni.NarHash) || uint64(n) != ni.NarSize {
		return fmt.Errorf("NAR of %s is %s, %d bytes; narinfo says %s, %d", ni.URL, got, n, ni.NarHash, ni.NarSize)
	}
	return nil
}

// startupCheckMetrics reads the index's report of its last startup check
// from /metrics: the mismatches by kind, and "leftover_uploads".
func (w *crashWorld) startupCheckMetrics() map[string]int {
	w.t.Helper()
	resp, err := http.Get("http://" + w.c.indexMetrics + "/metrics")
	if err != nil {
		w.t.Fatalf("index metrics: %v", err)
	}
	defer resp.Body.Close()
	m := map[string]int{}
	re := regexp.MustCompile(`^nixcache_index_(?:startup_check_mismatches\{kind="([a-z_]+)"\}|startup_(leftover_uploads)) (\d+)$`)
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if g := re.FindStringSubmatch(sc.Text()); g != nil {
			v, _ := strconv.Atoi(g[3])
			m[g[1]+g[2]] = v
		}
	}
	for _, k := range []string{"quarantined_path", "dropped_nar_file", "orphan", "leftover_uploads"} {
		if _, ok := m[k]; !ok {
			w.t.Fatalf("index metrics lack the startup check's %s: %v", k, m)
		}
	}
	return m
}

// gatewayAckedNarinfos returns the hash parts of the narinfo PUTs the
// gateway logged as answered 2xx.
func gatewayAckedNarinfos(t *testing.T, logFile string) map[string]bool {
	t.Helper()
	f, err := os.Open(logFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	re := regexp.MustCompile(`method=PUT path=/([0-9a-z]{32})\.narinfo status=2\d\d `)
	acked := map[string]bool{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if g := re.FindStringSubmatch(sc.Text()); g != nil {
			acked[g[1]] = true
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return acked
}
