package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nixcache/nixcache/nix/compression"
	"github.com/nixcache/nixcache/nix/narinfo"
	"github.com/nixcache/nixcache/nix/nixbase32"
	"github.com/nixcache/nixcache/nix/nixhash"
	"github.com/nixcache/nixcache/nix/signature"
)

// The load test (issue 7): readers and pushers against the three real
// services, every answer checked, then the services' memory, goroutines
// and open files compared before and after.
const (
	loadReaders = 64
	loadPushers = 4
	// loadDefaultDuration is the measured phase when NIXCACHE_LOAD_DURATION
	// is unset (CI); `make test-load` runs 60 s.
	loadDefaultDuration = 15 * time.Second
	// loadMinDuration gives the RSS rule at least two samples per third.
	loadMinDuration = 6 * time.Second
	// The warm-up lasts until every service has collected its garbage
	// warmUpGCs times under the load (so that its RSS has met the peaks
	// of its heap's cycle), at least warmUpMin and at most warmUpMax.
	warmUpGCs = 2
	warmUpMin = 10 * time.Second
	warmUpMax = 45 * time.Second

	// Leak tolerances, once idle again after the load: a few goroutines
	// and files for what comes and goes on its own (a gRPC keepalive, the
	// scrape's own connection being torn down, a bbolt remap).
	goroutineSlack = 8
	fdSlack        = 4

	// RSS rule: the largest sample of the last third of the load may
	// exceed the largest before it (warm-up and first third of the load)
	// by at most 25% plus 8 MiB; rssSampler.rssRule says why.
	rssGrowth = 1.25
	rssSlack  = 8 << 20
)

// loadPath is a path in the cache as the readers check it: the narinfo
// body the gateway served when the path was verified against the local
// store, and the NAR file's hash. file is kept for the seeded paths only,
// for the Range requests.
type loadPath struct {
	storePath string
	narinfo   string
	narURL    string
	fileSum   [sha256.Size]byte
	fileSize  int
	file      []byte
}

// loadCatalogue is what the readers may ask for; pushers add to it.
type loadCatalogue struct {
	mu     sync.RWMutex
	paths  []*loadPath
	seeded []*loadPath // with file
}

func (lc *loadCatalogue) add(p *loadPath) {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	lc.paths = append(lc.paths, p)
	if p.file != nil {
		lc.seeded = append(lc.seeded, p)
	}
}

func (lc *loadCatalogue) pick(r *rand.Rand, seededOnly bool) *loadPath {
	lc.mu.RLock()
	defer lc.mu.RUnlock()
	if seededOnly {
		return lc.seeded[r.IntN(len(lc.seeded))]
	}
	return lc.paths[r.IntN(len(lc.paths))]
}

func (lc *loadCatalogue) len() int {
	lc.mu.RLock()
	defer lc.mu.RUnlock()
	return len(lc.paths)
}

// loadErrors counts every failure and keeps the first few messages.
type loadErrors struct {
	n    atomic.Int64
	mu   sync.Mutex
	msgs []string
}

func (e *loadErrors) add(format string, args ...any) {
	if e.n.Add(1) > 20 {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.msgs = append(e.msgs, fmt.Sprintf(format, args...))
}

// readerStats is what one reader did; merged after a phase.
type readerStats struct {
	requests    map[string]int
	narinfoHit  []time.Duration
	narinfoMiss []time.Duration
	narBytes    int64
}

// TestLoad runs 64 keep-alive HTTP readers and 4 pushers (the real
// nix-build and nix copy --to, a fresh closure each time) against the
// three services for NIXCACHE_LOAD_DURATION (default 15s), after a
// warm-up. Every answer is checked: narinfos byte for byte against the one
// verified (hashes, references, signature) against the local store, NAR
// files and ranges of them by content, 404 only for paths never pushed.
// It reports throughput and narinfo latency, and fails on any error, on
// RSS growth after the warm-up, and on goroutines or open files left over
// once idle.
func TestLoad(t *testing.T) {
	duration := loadDefaultDuration
	if s := os.Getenv("NIXCACHE_LOAD_DURATION"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("NIXCACHE_LOAD_DURATION=%q: %v", s, err)
		}
		duration = d
	}
	if duration < loadMinDuration {
		t.Fatalf("NIXCACHE_LOAD_DURATION=%v: at least %v is needed for the RSS rule", duration, loadMinDuration)
	}
	// As deployed: the gateway's narinfo cache on, with its defaults
	// (following the index's changes, TTL when that is down).
	c := newCluster(t, withArgs("gateway", "-narinfo-cache-ttl", "2s", "-narinfo-cache-max-age", "1h"))
	pub, err := signature.ParsePublicKey(c.publicKey)
	if err != nil {
		t.Fatal(err)
	}
	lt := &loadTest{c: c, pub: pub, cat: &loadCatalogue{}, runID: randomHex(t, 4),
		pushNix: nixConfig("netrc-file = " + c.netrc(c.pushToken))}
	t.Cleanup(func() { lt.deleteBuilt(t) })
	for range loadPushers {
		lt.homes = append(lt.homes, t.TempDir())
	}

	// Seed: three closures with the real nix copy, one per compression.
	home := t.TempDir()
	client := &http.Client{Timeout: time.Minute, Transport: &http.Transport{DisableCompression: true}}
	defer client.CloseIdleConnections()
	for i, comp := range []string{compression.XZ, compression.Zstd, compression.None} {
		paths, err := lt.push(t.Context(), client, home, fmt.Sprintf("seed-%d", i), comp, true)
		if err != nil {
			t.Fatalf("seed: %v", err)
		}
		for _, p := range paths {
			lt.cat.add(p)
		}
	}
	cacheInfo, err := lt.get(t.Context(), client, c.URL+"/nix-cache-info", nil)
	if err != nil || cacheInfo.status != http.StatusOK || !strings.Contains(cacheInfo.body, "StoreDir: /nix/store\n") {
		t.Fatalf("GET /nix-cache-info: %+v %v", cacheInfo, err)
	}
	lt.cacheInfo = cacheInfo.body
	client.CloseIdleConnections()

	pids := map[string]int{}
	for _, s := range services {
		pids[s] = c.procs[s].cmd.Process.Pid
	}
	rss := newRSSSampler(pids, lt.metricsURLs())
	sampling, stopSampling := context.WithCancel(t.Context())
	sampled := make(chan struct{})
	go func() { rss.run(sampling); close(sampled) }()
	defer func() { stopSampling(); <-sampled }()

	// Warm-up: the same load, so that pools, caches and heaps reach their
	// working size; only its RSS is kept, as the reference.
	warmCtx, endWarmUp := context.WithTimeout(t.Context(), warmUpMax)
	defer endWarmUp()
	gcs := make(chan string, 1)
	go func() { gcs <- lt.endWarmUp(warmCtx, endWarmUp) }()
	warm := lt.phase(warmCtx)
	t.Logf("warm-up: %v, %d requests, %d closures pushed; %s", warm.elapsed.Round(time.Millisecond), warm.requests, warm.pushes, <-gcs)
	before := lt.settledCounts(t)

	rss.mark()
	loadCtx, endLoad := context.WithTimeout(t.Context(), duration)
	defer endLoad()
	res := lt.phase(loadCtx)
	stopSampling()
	<-sampled
	after, leaks := lt.countsBack(t, before)

	rep := lt.report(res, rss, before, after)
	for _, line := range rep.lines() {
		t.Log(line)
	}
	lt.writeReport(t, rep)

	if n := lt.errs.n.Load(); n > 0 {
		for _, m := range lt.errs.msgs {
			t.Error(m)
		}
		t.Errorf("%d errors under load (first %d above)", n, len(lt.errs.msgs))
	}
	for _, l := range leaks {
		t.Error(l)
	}
	for _, s := range services {
		if msg := rss.check(s); msg != "" {
			t.Error(msg)
		}
	}
	if res.pushes == 0 {
		t.Error("no closure was pushed during the load")
	}
}

type loadTest struct {
	c         *cluster
	pub       signature.PublicKey
	cat       *loadCatalogue
	runID     string
	seq       atomic.Int64 // makes each pushed closure's seed unique
	pushNix   string       // Nix configuration with the push token's netrc
	homes     []string     // HOME of each pusher
	cacheInfo string
	errs      loadErrors

	builtMu sync.Mutex
	built   []string // store paths to delete at the end
}

type httpResult struct {
	status int
	header http.Header
	body   string
}

// get performs one GET and reads the whole body.
func (lt *loadTest) get(ctx context.Context, client *http.Client, url string, header http.Header) (httpResult, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return httpResult{}, err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := client.Do(req)
	if err != nil {
		return httpResult{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return httpResult{}, fmt.Errorf("GET %s: read body: %w", url, err)
	}
	return httpResult{status: resp.StatusCode, header: resp.Header, body: string(b)}, nil
}

// nix runs a Nix command with the test configuration and HOME home.
func (lt *loadTest) nix(ctx context.Context, home, config, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), "NIX_CONFIG="+config, "HOME="+home, "XDG_CACHE_HOME="+filepath.Join(home, ".cache"))
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, errb.String())
	}
	return out.String(), nil
}

// push builds testdata/closure.nix with a fresh seed with the real
// nix-build, copies it to the cache with the real nix copy --to, and
// verifies every path of it as served against the local store.
func (lt *loadTest) push(ctx context.Context, client *http.Client, home, seed, comp string, keepFile bool) ([]*loadPath, error) {
	seed = "load-" + lt.runID + "-" + seed
	out, err := lt.nix(ctx, home, nixConfig(), "nix-build", "testdata/closure.nix", "--argstr", "seed", seed, "--no-out-link")
	if err != nil {
		return nil, err
	}
	top := strings.TrimSpace(out)
	out, err = lt.nix(ctx, home, nixConfig(), "nix", "path-info", "--json", "--recursive", top)
	if err != nil {
		return nil, err
	}
	var infos []pathInfo
	if err := json.Unmarshal([]byte(out), &infos); err != nil {
		return nil, fmt.Errorf("nix path-info of %s: %w\n%s", top, err, out)
	}
	lt.builtMu.Lock()
	for _, i := range infos {
		lt.built = append(lt.built, i.Path)
	}
	lt.builtMu.Unlock()
	if len(infos) != 3 {
		return nil, fmt.Errorf("closure of %s has %d paths, want 3", top, len(infos))
	}
	if _, err := lt.nix(ctx, home, lt.pushNix, "nix", "copy", "--to", lt.c.URL+"?compression="+comp, top); err != nil {
		return nil, err
	}
	var paths []*loadPath
	for _, info := range infos {
		p, err := lt.verify(ctx, client, info, keepFile)
		if err != nil {
			return nil, err
		}
		paths = append(paths, p)
	}
	return paths, nil
}

// verify fetches a path's narinfo and NAR file and checks them against
// what the local store says of the path: store path, NAR hash and size,
// references, a valid signature by the cache's key, the file's hash and
// size, and the decompressed file's hash and size.
func (lt *loadTest) verify(ctx context.Context, client *http.Client, info pathInfo, keepFile bool) (*loadPath, error) {
	url := lt.c.URL + "/" + hashPart(info.Path) + ".narinfo"
	r, err := lt.get(ctx, client, url, nil)
	if err != nil {
		return nil, err
	}
	if r.status != http.StatusOK {
		return nil, fmt.Errorf("GET %s after nix copy: %d %q", url, r.status, r.body)
	}
	ni, err := narinfo.Parse(strings.NewReader(r.body), "/nix/store")
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w\n%s", url, err, r.body)
	}
	narHash, err := nixhash.Parse(info.NarHash)
	if err != nil {
		return nil, fmt.Errorf("nix path-info hash of %s: %w", info.Path, err)
	}
	var refs []string
	for _, ref := range info.References {
		refs = append(refs, filepath.Base(ref))
	}
	slices.Sort(refs)
	served := slices.Sorted(slices.Values(ni.References))
	switch {
	case ni.StorePath != info.Path:
		return nil, fmt.Errorf("GET %s: StorePath %s, want %s", url, ni.StorePath, info.Path)
	case !ni.NarHash.Equal(narHash) || ni.NarSize != info.NarSize:
		return nil, fmt.Errorf("GET %s: NAR %s/%d, the local store has %s/%d", url, ni.NarHash, ni.NarSize, narHash, info.NarSize)
	case !slices.Equal(served, refs):
		return nil, fmt.Errorf("GET %s: references %v, the local store has %v", url, served, refs)
	case ni.FileHash.Algo != nixhash.SHA256:
		return nil, fmt.Errorf("GET %s: FileHash %q is not sha256", url, ni.FileHash)
	}
	fp, err := ni.Fingerprint("/nix/store")
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", url, err)
	}
	if !slices.ContainsFunc(ni.Sigs, func(s string) bool { return lt.pub.Verify(fp, s) }) {
		return nil, fmt.Errorf("GET %s: no valid signature by %s among %v", url, lt.pub.Name, ni.Sigs)
	}

	narURL := lt.c.URL + "/" + ni.URL
	nr, err := lt.get(ctx, client, narURL, nil)
	if err != nil {
		return nil, err
	}
	file := []byte(nr.body)
	sum := sha256.Sum256(file)
	if nr.status != http.StatusOK || uint64(len(file)) != ni.FileSize || !bytes.Equal(sum[:], ni.FileHash.Digest) {
		return nil, fmt.Errorf("GET %s: %d, %d bytes of sha256 %x; narinfo says %d bytes of %s", narURL, nr.status, len(file), sum, ni.FileSize, ni.FileHash)
	}
	dec, err := compression.NewReader(ni.EffectiveCompression(), bytes.NewReader(file))
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", narURL, err)
	}
	defer dec.Close()
	h := sha256.New()
	n, err := io.Copy(h, dec)
	if err != nil {
		return nil, fmt.Errorf("GET %s: decompress %s: %w", narURL, ni.EffectiveCompression(), err)
	}
	if uint64(n) != info.NarSize || !bytes.Equal(h.Sum(nil), narHash.Digest) {
		return nil, fmt.Errorf("GET %s: decompressed to %d bytes of sha256 %x; the local store has %d bytes of %s", narURL, n, h.Sum(nil), info.NarSize, narHash)
	}
	p := &loadPath{storePath: info.Path, narinfo: r.body, narURL: narURL, fileSum: sum, fileSize: len(file)}
	if keepFile {
		p.file = file
	}
	return p, nil
}

// phaseResult is what one phase did.
type phaseResult struct {
	elapsed     time.Duration
	requests    int
	byKind      map[string]int
	narinfoHit  []time.Duration
	narinfoMiss []time.Duration
	narBytes    int64
	pushes      int
	pushedPaths int
}

// phase runs the readers and pushers until ctx is done. Readers stop
// then; pushers finish the push they are in.
func (lt *loadTest) phase(ctx context.Context) phaseResult {
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		res      = phaseResult{byKind: map[string]int{}}
		start    = time.Now()
		pushDone = make(chan struct{})
	)
	for i := range loadReaders {
		wg.Go(func() {
			s := lt.read(ctx, i)
			mu.Lock()
			defer mu.Unlock()
			for k, n := range s.requests {
				res.byKind[k] += n
				res.requests += n
			}
			res.narinfoHit = append(res.narinfoHit, s.narinfoHit...)
			res.narinfoMiss = append(res.narinfoMiss, s.narinfoMiss...)
			res.narBytes += s.narBytes
		})
	}
	var pushers sync.WaitGroup
	for i := range loadPushers {
		pushers.Go(func() {
			closures, paths := lt.pushLoop(ctx, i)
			mu.Lock()
			defer mu.Unlock()
			res.pushes += closures
			res.pushedPaths += paths
		})
	}
	go func() { pushers.Wait(); close(pushDone) }()
	wg.Wait()
	res.elapsed = time.Since(start)
	<-pushDone
	return res
}

// endWarmUp calls end once every service has run warmUpGCs garbage
// collections since it was called and warmUpMin has passed, or when ctx
// is done; it says how many each ran.
func (lt *loadTest) endWarmUp(ctx context.Context, end context.CancelFunc) string {
	defer end()
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	gcCounts := func() map[string]float64 {
		out := map[string]float64{}
		for s, url := range lt.metricsURLs() {
			v, err := scrapeMetric(client, url, "go_gc_duration_seconds_count")
			if err != nil {
				if ctx.Err() == nil {
					lt.errs.add("warm-up: %v", err)
				}
				return nil
			}
			out[s] = v
		}
		return out
	}
	start, began := gcCounts(), time.Now()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return fmt.Sprintf("ended by the %v bound before %d garbage collections in every service", warmUpMax, warmUpGCs)
		case <-tick.C:
		}
		now := gcCounts()
		if now == nil || start == nil {
			return "garbage collections not counted"
		}
		ran := map[string]float64{}
		enough := time.Since(began) >= warmUpMin
		for s := range now {
			ran[s] = now[s] - start[s]
			enough = enough && ran[s] >= warmUpGCs
		}
		if enough {
			return fmt.Sprintf("garbage collections: %v", ran)
		}
	}
}

// pushLoop pushes fresh closures until ctx is done, rotating the
// compression; each pushed and verified path joins the catalogue.
func (lt *loadTest) pushLoop(ctx context.Context, id int) (closures, paths int) {
	home := lt.homes[id]
	client := &http.Client{Timeout: time.Minute, Transport: &http.Transport{DisableCompression: true}}
	defer client.CloseIdleConnections()
	comps := []string{compression.Zstd, compression.XZ, compression.None}
	for n := 0; ctx.Err() == nil; n++ {
		seed := fmt.Sprintf("p%d-%d", id, lt.seq.Add(1))
		// Not ctx: a push under way is finished, not cut.
		ps, err := lt.push(context.WithoutCancel(ctx), client, home, seed, comps[n%len(comps)], false)
		if err != nil {
			lt.errs.add("pusher %d: %v", id, err)
			continue
		}
		for _, p := range ps {
			lt.cat.add(p)
		}
		closures++
		paths += len(ps)
	}
	return closures, paths
}

// Request kinds, and their shares of a reader's requests (out of 100).
var readMix = []struct {
	kind  string
	share int
}{
	{"narinfo", 50},
	{"narinfo-unknown", 15},
	{"nar", 12},
	{"nar-range", 10},
	{"nar-unknown", 5},
	{"nix-cache-info", 8},
}

// randomHash returns n random bytes in nix32: a well-formed hash part
// (20 bytes) or file hash (32 bytes) that no path has.
func randomHash(r *rand.Rand, n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return nixbase32.EncodeToString(b)
}

// read is one reader: its own keep-alive connection, requests of the mix
// back to back until ctx is done, every answer checked.
func (lt *loadTest) read(ctx context.Context, id int) readerStats {
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableCompression: true}}
	defer client.CloseIdleConnections()
	r := rand.New(rand.NewPCG(uint64(id), uint64(time.Now().UnixNano())))
	s := readerStats{requests: map[string]int{}}
	for ctx.Err() == nil {
		roll, kind := r.IntN(100), ""
		for _, m := range readMix {
			if roll < m.share {
				kind = m.kind
				break
			}
			roll -= m.share
		}
		// A request cut by the end of the phase is not an error: the
		// context is for that. Its own timeout is the client's.
		err := lt.readOne(context.WithoutCancel(ctx), client, r, kind, &s)
		if err != nil {
			lt.errs.add("reader %d, %s: %v", id, kind, err)
		}
		s.requests[kind]++
	}
	return s
}

func (lt *loadTest) readOne(ctx context.Context, client *http.Client, r *rand.Rand, kind string, s *readerStats) error {
	base := lt.c.URL
	switch kind {
	case "narinfo":
		p := lt.cat.pick(r, false)
		url := base + "/" + hashPart(p.storePath) + ".narinfo"
		start := time.Now()
		res, err := lt.get(ctx, client, url, nil)
		s.narinfoHit = append(s.narinfoHit, time.Since(start))
		if err != nil {
			return err
		}
		if res.status != http.StatusOK || res.body != p.narinfo {
			return fmt.Errorf("GET %s: %d %q, want 200 with the narinfo verified after the push:\n%s", url, res.status, res.body, p.narinfo)
		}
	case "narinfo-unknown":
		url := base + "/" + randomHash(r, 20) + ".narinfo"
		start := time.Now()
		res, err := lt.get(ctx, client, url, nil)
		s.narinfoMiss = append(s.narinfoMiss, time.Since(start))
		if err != nil {
			return err
		}
		if res.status != http.StatusNotFound {
			return fmt.Errorf("GET %s (never pushed): %d %q, want 404", url, res.status, res.body)
		}
	case "nar":
		p := lt.cat.pick(r, false)
		res, err := lt.get(ctx, client, p.narURL, nil)
		if err != nil {
			return err
		}
		s.narBytes += int64(len(res.body))
		if sum := sha256.Sum256([]byte(res.body)); res.status != http.StatusOK || sum != p.fileSum {
			return fmt.Errorf("GET %s: %d, %d bytes of sha256 %x, want 200, %d bytes of %x", p.narURL, res.status, len(res.body), sum, p.fileSize, p.fileSum)
		}
	case "nar-range":
		p := lt.cat.pick(r, true)
		size := len(p.file)
		var spec string
		var start, end int // of the file, end exclusive
		switch r.IntN(3) {
		case 0:
			start = r.IntN(size)
			end = start + 1 + r.IntN(size-start)
			spec = fmt.Sprintf("bytes=%d-%d", start, end-1)
		case 1:
			start, end = r.IntN(size), size
			spec = fmt.Sprintf("bytes=%d-", start)
		default:
			start, end = r.IntN(size), size
			spec = fmt.Sprintf("bytes=-%d", size-start)
		}
		res, err := lt.get(ctx, client, p.narURL, http.Header{"Range": {spec}})
		if err != nil {
			return err
		}
		s.narBytes += int64(len(res.body))
		wantRange := fmt.Sprintf("bytes %d-%d/%d", start, end-1, size)
		if res.status != http.StatusPartialContent || res.header.Get("Content-Range") != wantRange || res.body != string(p.file[start:end]) {
			return fmt.Errorf("GET %s, Range %s: %d, Content-Range %q, %d bytes; want 206, %q, %d bytes of the file", p.narURL, spec, res.status, res.header.Get("Content-Range"), len(res.body), wantRange, end-start)
		}
	case "nar-unknown":
		url := base + "/nar/" + randomHash(r, 32) + ".nar.xz"
		res, err := lt.get(ctx, client, url, nil)
		if err != nil {
			return err
		}
		if res.status != http.StatusNotFound {
			return fmt.Errorf("GET %s (never pushed): %d %q, want 404", url, res.status, res.body)
		}
	case "nix-cache-info":
		res, err := lt.get(ctx, client, base+"/nix-cache-info", nil)
		if err != nil {
			return err
		}
		if res.status != http.StatusOK || res.body != lt.cacheInfo {
			return fmt.Errorf("GET /nix-cache-info: %d %q, want 200 %q", res.status, res.body, lt.cacheInfo)
		}
	default:
		return fmt.Errorf("unknown request kind %q", kind)
	}
	return nil
}

// procCounts is one service's goroutines and open files.
type procCounts struct {
	Goroutines int `json:"goroutines"`
	OpenFDs    int `json:"open_fds"`
}

// metricsURLs are the /metrics pages of the services.
func (lt *loadTest) metricsURLs() map[string]string {
	return map[string]string{
		"signer":  "http://" + lt.c.signerMetrics + "/metrics",
		"index":   "http://" + lt.c.indexMetrics + "/metrics",
		"gateway": lt.c.URL + "/metrics",
	}
}

// counts scrapes go_goroutines and process_open_fds from each service's
// /metrics, over a connection of its own that is closed after (so the
// scrape counts the same in every snapshot).
func (lt *loadTest) counts(t *testing.T) map[string]procCounts {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	out := map[string]procCounts{}
	for s, url := range lt.metricsURLs() {
		r, err := lt.get(t.Context(), client, url, nil)
		if err != nil || r.status != http.StatusOK {
			t.Fatalf("GET %s: %+v %v", url, r.status, err)
		}
		g, okG := metricValue(r.body, "go_goroutines")
		f, okF := metricValue(r.body, "process_open_fds")
		if !okG || !okF {
			t.Fatalf("%s: /metrics lacks go_goroutines or process_open_fds", s)
		}
		out[s] = procCounts{Goroutines: int(g), OpenFDs: int(f)}
	}
	return out
}

func metricValue(page, name string) (float64, bool) {
	for _, line := range strings.Split(page, "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f, err == nil
		}
	}
	return 0, false
}

// settledCounts polls the counts until two in a row, 200 ms apart, are
// equal (the services are idle), for at most 15 s; then it takes the
// lowest seen, so that a busy machine does not set a high baseline.
func (lt *loadTest) settledCounts(t *testing.T) map[string]procCounts {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	prev := lt.counts(t)
	lowest := prev
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for time.Now().Before(deadline) {
		<-tick.C
		cur := lt.counts(t)
		for s, c := range cur {
			l := lowest[s]
			lowest[s] = procCounts{min(l.Goroutines, c.Goroutines), min(l.OpenFDs, c.OpenFDs)}
		}
		if equalCounts(prev, cur) {
			return cur
		}
		prev = cur
	}
	t.Logf("counts did not settle within 15s; baseline is the lowest seen: %v", lowest)
	return lowest
}

func equalCounts(a, b map[string]procCounts) bool {
	for s, c := range a {
		if b[s] != c {
			return false
		}
	}
	return len(a) == len(b)
}

// countsBack polls, for at most 30 s, until every service is back within
// the slack of its counts before the load; it returns the last counts and
// what is still over.
func (lt *loadTest) countsBack(t *testing.T, before map[string]procCounts) (map[string]procCounts, []string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		cur := lt.counts(t)
		var over []string
		for _, s := range services {
			b, a := before[s], cur[s]
			if a.Goroutines > b.Goroutines+goroutineSlack {
				over = append(over, fmt.Sprintf("%s: %d goroutines 30s after the load, %d before (slack %d): a goroutine leak", s, a.Goroutines, b.Goroutines, goroutineSlack))
			}
			if a.OpenFDs > b.OpenFDs+fdSlack {
				over = append(over, fmt.Sprintf("%s: %d open files 30s after the load, %d before (slack %d): a file descriptor leak", s, a.OpenFDs, b.OpenFDs, fdSlack))
			}
		}
		if len(over) == 0 || time.Now().After(deadline) {
			return cur, over
		}
		<-tick.C
	}
}

// rssSampler reads VmRSS of each service from /proc every second, and
// for the report the Go heap in use (go_memstats_heap_inuse_bytes).
type rssSampler struct {
	pids    map[string]int
	metrics map[string]string // /metrics URLs
	mu      sync.Mutex
	samples map[string][]int64 // RSS, bytes
	heap    map[string][]int64 // heap in use, bytes
	loadAt  map[string]int     // index of the first sample of the load
	errs    []string
}

func newRSSSampler(pids map[string]int, metrics map[string]string) *rssSampler {
	return &rssSampler{pids: pids, metrics: metrics,
		samples: map[string][]int64{}, heap: map[string][]int64{}, loadAt: map[string]int{}}
}

// mark notes that the load starts: the samples before are the warm-up's.
func (r *rssSampler) mark() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for s := range r.pids {
		r.loadAt[s] = len(r.samples[s])
	}
}

func (r *rssSampler) run(ctx context.Context) {
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		for s, pid := range r.pids {
			v, err := vmRSS(pid)
			heap, herr := scrapeMetric(client, r.metrics[s], "go_memstats_heap_inuse_bytes")
			r.mu.Lock()
			if err == nil {
				r.samples[s] = append(r.samples[s], v)
			} else {
				r.errs = append(r.errs, err.Error())
			}
			if herr == nil {
				r.heap[s] = append(r.heap[s], int64(heap))
			} else if ctx.Err() == nil {
				r.errs = append(r.errs, herr.Error())
			}
			r.mu.Unlock()
		}
	}
}

func scrapeMetric(client *http.Client, url, name string) (float64, error) {
	resp, err := client.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET %s: %d %v", url, resp.StatusCode, err) //nolint:errorlint // err is nil when the status is what failed
	}
	v, ok := metricValue(string(b), name)
	if !ok {
		return 0, fmt.Errorf("%s: no %s", url, name)
	}
	return v, nil
}

func vmRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("/proc/%d/status: %q: %w", pid, line, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("/proc/%d/status has no VmRSS", pid)
}

// rssRule splits one service's RSS samples for the rule: ref is the
// largest of the warm-up and of the first third of the load, last the
// largest of the last third; ok is false when a third has fewer than two.
//
// Why maxima, and why this bound: a Go service's RSS follows its heap's
// garbage-collection cycle. The heap grows to about twice what was live
// at the last collection, then drops, and the runtime gives freed pages
// back to the system only gradually. Under this load the index's cycle
// lasts 10-20 s and spans about 100 MiB, so single samples, means or
// short windows swing with the cycle, not with leaks. The peak of the
// cycle, though, is steady when nothing leaks: the warm-up runs until
// every service has collected twice under the load, so the largest
// sample up to the first third of the load is that peak, and a service
// that keeps something per request raises every later peak above it.
// The 25% covers peaks the warm-up did not happen to meet (more pushes
// decompressing at the same moment); the 8 MiB covers the small signer
// (about 17 MiB), where 25% is within the noise of stacks and pools.
func (r *rssSampler) rssRule(service string) (ref, last int64, ok bool) {
	all := r.samples[service]
	return rssRule(all[:r.loadAt[service]], all[r.loadAt[service]:])
}

// rssRule is the rule on the samples of the warm-up and of the load.
func rssRule(warm, load []int64) (ref, last int64, ok bool) {
	n := len(load) / 3
	if n < 2 {
		return 0, 0, false
	}
	ref = slices.Max(load[:n])
	if len(warm) > 0 {
		ref = max(ref, slices.Max(warm))
	}
	return ref, slices.Max(load[len(load)-n:]), true
}

// check applies the RSS rule to one service; "" when it holds.
func (r *rssSampler) check(service string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.errs) > 0 {
		return "RSS sampling: " + strings.Join(r.errs, "; ")
	}
	ref, last, ok := r.rssRule(service)
	if !ok {
		return fmt.Sprintf("%s: only %d RSS samples in the load, too few for the rule", service, len(r.samples[service])-r.loadAt[service])
	}
	if limit := rssLimit(ref); last > limit {
		return fmt.Sprintf("%s: RSS grows under steady load: largest of the last third %.1f MiB > %.1f MiB (largest before %.1f MiB × %.2f + %d MiB); samples (MiB, load from #%d) %v",
			service, mib(last), mib(limit), mib(ref), rssGrowth, rssSlack>>20, r.loadAt[service], mibs(r.samples[service]))
	}
	return ""
}

// rssLimit is the largest RSS allowed in the last third of the load.
func rssLimit(ref int64) int64 { return int64(float64(ref)*rssGrowth) + rssSlack }

func mib(b int64) float64 { return float64(b) / (1 << 20) }

func mibs(bs []int64) []float64 {
	out := make([]float64, len(bs))
	for i, b := range bs {
		out[i] = float64(int(mib(b)*10)) / 10
	}
	return out
}

// loadReport is the summary written to load.json (and load.md).
type loadReport struct {
	DurationS        float64               `json:"duration_s"`
	Readers          int                   `json:"readers"`
	Pushers          int                   `json:"pushers"`
	Requests         int                   `json:"requests"`
	RequestsPerS     float64               `json:"requests_per_s"`
	ByKind           map[string]int        `json:"requests_by_kind"`
	NarinfoP50Ms     float64               `json:"narinfo_p50_ms"`
	NarinfoP99Ms     float64               `json:"narinfo_p99_ms"`
	NarinfoHitP50Ms  float64               `json:"narinfo_hit_p50_ms"`
	NarinfoHitP99Ms  float64               `json:"narinfo_hit_p99_ms"`
	NarinfoMissP50Ms float64               `json:"narinfo_miss_p50_ms"`
	NarinfoMissP99Ms float64               `json:"narinfo_miss_p99_ms"`
	NarMiB           float64               `json:"nar_mib"`
	NarMiBPerS       float64               `json:"nar_mib_per_s"`
	Pushes           int                   `json:"closures_pushed"`
	PushedPaths      int                   `json:"paths_pushed"`
	CataloguePaths   int                   `json:"paths_in_cache"`
	Errors           int64                 `json:"errors"`
	Before           map[string]procCounts `json:"idle_before"`
	After            map[string]procCounts `json:"idle_after"`
	RSSMiB           map[string][]float64  `json:"rss_mib"`
	RSSThirdsMiB     map[string][2]float64 `json:"rss_max_before_and_last_third_mib"`
	RSSLoadFrom      map[string]int        `json:"rss_load_from_sample"`
	HeapMiB          map[string][]float64  `json:"heap_inuse_mib"`
}

func percentile(ds []time.Duration, p float64) float64 {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(p * float64(len(s)-1))
	return float64(s[i].Microseconds()) / 1000
}

func (lt *loadTest) report(res phaseResult, rss *rssSampler, before, after map[string]procCounts) loadReport {
	secs := res.elapsed.Seconds()
	all := append(slices.Clone(res.narinfoHit), res.narinfoMiss...)
	rep := loadReport{
		DurationS:        secs,
		Readers:          loadReaders,
		Pushers:          loadPushers,
		Requests:         res.requests,
		RequestsPerS:     float64(res.requests) / secs,
		ByKind:           res.byKind,
		NarinfoP50Ms:     percentile(all, 0.50),
		NarinfoP99Ms:     percentile(all, 0.99),
		NarinfoHitP50Ms:  percentile(res.narinfoHit, 0.50),
		NarinfoHitP99Ms:  percentile(res.narinfoHit, 0.99),
		NarinfoMissP50Ms: percentile(res.narinfoMiss, 0.50),
		NarinfoMissP99Ms: percentile(res.narinfoMiss, 0.99),
		NarMiB:           mib(res.narBytes),
		NarMiBPerS:       mib(res.narBytes) / secs,
		Pushes:           res.pushes,
		PushedPaths:      res.pushedPaths,
		CataloguePaths:   lt.cat.len(),
		Errors:           lt.errs.n.Load(),
		Before:           before,
		After:            after,
		RSSMiB:           map[string][]float64{},
		RSSThirdsMiB:     map[string][2]float64{},
		HeapMiB:          map[string][]float64{},
		RSSLoadFrom:      map[string]int{},
	}
	rss.mu.Lock()
	defer rss.mu.Unlock()
	for s, v := range rss.heap {
		rep.HeapMiB[s] = mibs(v)
	}
	for s, v := range rss.samples {
		rep.RSSMiB[s] = mibs(v)
		rep.RSSLoadFrom[s] = rss.loadAt[s]
		if f, l, ok := rss.rssRule(s); ok {
			rep.RSSThirdsMiB[s] = [2]float64{mib(f), mib(l)}
		}
	}
	return rep
}

func (r loadReport) lines() []string {
	out := []string{
		fmt.Sprintf("load: %.1fs, %d readers, %d pushers: %d requests (%.0f/s), %d errors", r.DurationS, r.Readers, r.Pushers, r.Requests, r.RequestsPerS, r.Errors),
		fmt.Sprintf("requests by kind: %v", r.ByKind),
		fmt.Sprintf("narinfo latency: p50 %.2f ms, p99 %.2f ms (found: %.2f / %.2f, not found: %.2f / %.2f)",
			r.NarinfoP50Ms, r.NarinfoP99Ms, r.NarinfoHitP50Ms, r.NarinfoHitP99Ms, r.NarinfoMissP50Ms, r.NarinfoMissP99Ms),
		fmt.Sprintf("NAR: %.1f MiB served, %.1f MiB/s", r.NarMiB, r.NarMiBPerS),
		fmt.Sprintf("pushes: %d closures (%d paths) by nix copy --to; %d paths in the cache at the end", r.Pushes, r.PushedPaths, r.CataloguePaths),
	}
	for _, s := range services {
		th := r.RSSThirdsMiB[s]
		out = append(out, fmt.Sprintf("%s: goroutines %d -> %d, open fds %d -> %d (idle, before -> after); RSS max before %.1f MiB, in the last third %.1f MiB",
			s, r.Before[s].Goroutines, r.After[s].Goroutines, r.Before[s].OpenFDs, r.After[s].OpenFDs, th[0], th[1]))
	}
	return out
}

// writeReport writes load.json and load.md to a temporary directory and
// copies them to $NIXCACHE_ARTIFACTS when set.
func (lt *loadTest) writeReport(t *testing.T, r loadReport) {
	t.Helper()
	dir := t.TempDir()
	j, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	var md strings.Builder
	fmt.Fprintf(&md, "# nixcache load test\n\n")
	fmt.Fprintf(&md, "%.0f s, %d readers, %d pushers (real `nix copy --to`), %s.\n\n", r.DurationS, r.Readers, r.Pushers, time.Now().UTC().Format(time.DateOnly))
	fmt.Fprintf(&md, "| figure | value |\n|---|---|\n")
	fmt.Fprintf(&md, "| requests | %d (%.0f/s), %d errors |\n", r.Requests, r.RequestsPerS, r.Errors)
	fmt.Fprintf(&md, "| narinfo p50 / p99 | %.2f / %.2f ms |\n", r.NarinfoP50Ms, r.NarinfoP99Ms)
	fmt.Fprintf(&md, "| narinfo found p50 / p99 | %.2f / %.2f ms |\n", r.NarinfoHitP50Ms, r.NarinfoHitP99Ms)
	fmt.Fprintf(&md, "| narinfo not found p50 / p99 | %.2f / %.2f ms |\n", r.NarinfoMissP50Ms, r.NarinfoMissP99Ms)
	fmt.Fprintf(&md, "| NAR | %.1f MiB, %.1f MiB/s |\n", r.NarMiB, r.NarMiBPerS)
	fmt.Fprintf(&md, "| pushes | %d closures, %d paths |\n", r.Pushes, r.PushedPaths)
	fmt.Fprintf(&md, "\n| service | goroutines idle before → after | open fds before → after | RSS max, warm-up and first third → last third (MiB) |\n|---|---|---|---|\n")
	for _, s := range services {
		th := r.RSSThirdsMiB[s]
		fmt.Fprintf(&md, "| %s | %d → %d | %d → %d | %.1f → %.1f |\n", s, r.Before[s].Goroutines, r.After[s].Goroutines, r.Before[s].OpenFDs, r.After[s].OpenFDs, th[0], th[1])
	}
	for name, b := range map[string][]byte{"load.json": j, "load.md": []byte(md.String())} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("report: %s", filepath.Join(dir, "load.md"))
	keepArtifacts(t, dir, "load.json", "load.md")
}

// deleteBuilt removes the paths the test built from the host store (they
// have no GC roots); a failure is only logged, the test is over.
func (lt *loadTest) deleteBuilt(t *testing.T) {
	lt.builtMu.Lock()
	defer lt.builtMu.Unlock()
	if len(lt.built) == 0 {
		return
	}
	out, err := exec.Command("nix-store", append([]string{"--delete"}, lt.built...)...).CombinedOutput()
	if err != nil {
		t.Logf("nix-store --delete of the %d paths built: %v\n%s", len(lt.built), err, out)
	}
}

// TestRSSRule: the RSS rule passes a garbage collector's sawtooth whose
// peaks are steady, and fails one whose peaks climb with a leak, for the
// two shapes seen here: the index's large slow cycle in a 60 s run, and the
// gateway's small fast one in the 15 s of CI.
func TestRSSRule(t *testing.T) {
	// sawtooth samples one per second: from low to high MiB over cycle
	// seconds, then back, plus leak MiB a second.
	sawtooth := func(seconds int, low, high, cycle, leak float64) []int64 {
		var out []int64
		for i := range seconds {
			phase := float64(i%int(cycle)) / (cycle - 1)
			out = append(out, int64((low+(high-low)*phase+leak*float64(i))*(1<<20)))
		}
		return out
	}
	for _, tc := range []struct {
		name           string
		warm, load     int
		low, high, cyc float64
		leak           float64 // MiB/s
		want           bool    // the rule holds
	}{
		{"index, 60 s, steady", 15, 60, 60, 130, 15, 0, true},
		{"index, 60 s, leak of 2 MiB/s", 15, 60, 60, 130, 15, 2, false},
		{"gateway, 15 s, steady", 10, 15, 30, 45, 5, 0, true},
		{"gateway, 15 s, leak of 4 MiB/s", 10, 15, 30, 45, 5, 4, false},
	} {
		all := sawtooth(tc.warm+tc.load, tc.low, tc.high, tc.cyc, tc.leak)
		ref, last, ok := rssRule(all[:tc.warm], all[tc.warm:])
		if !ok {
			t.Fatalf("%s: too few samples", tc.name)
		}
		if holds := last <= rssLimit(ref); holds != tc.want {
			t.Errorf("%s: largest before %.0f MiB, in the last third %.0f MiB, limit %.0f MiB: holds %v, want %v",
				tc.name, mib(ref), mib(last), mib(rssLimit(ref)), holds, tc.want)
		}
	}
	if _, _, ok := rssRule(nil, make([]int64, 5)); ok {
		t.Error("5 samples of load: the rule applied, want too few (a third of 1)")
	}
}
