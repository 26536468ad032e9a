// Package shootout runs the whole benchmark: it builds the workload with
// the real Nix, starts every server on loopback, measures them in
// interleaved rounds, profiles nixcache, measures the catalogue at scale,
// and writes the results.
package shootout

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nixcache/nixcache/bench/internal/load"
	"github.com/nixcache/nixcache/bench/internal/proc"
	"github.com/nixcache/nixcache/bench/internal/prof"
	"github.com/nixcache/nixcache/bench/internal/report"
	"github.com/nixcache/nixcache/bench/internal/scale"
	"github.com/nixcache/nixcache/bench/internal/servers"
	"github.com/nixcache/nixcache/bench/internal/stats"
)

// Options configure Run.
type Options struct {
	Repo string // the repository root
	// Ref, when set, is the git revision whose services are measured
	// (exported with git archive); otherwise the working tree's.
	Ref  string
	Work string // scratch: binaries, workload expressions, data of every server
	Out  string // where the results go
	Mode string // "full" or "smoke", in the results

	Paths, MiB int // the workload: gen-closure.py's N and TARGET_MIB
	Rounds     int
	BigMiB     int // the single large NAR
	Conns      []int

	CatalogPoints []int
	SignedInserts int
	Lookups       int

	Profile bool // perf the nixcache services in extra passes
	Keep    bool // keep servers' data in Work
	// Only, when set, runs one part alone: "catalog" (the catalogue
	// scale), "push" (the push rounds, and with Profile a profiled push)
	// or "serve" (the narinfo and NAR passes of the co-located
	// deployments, the host store's and nginx).
	Only string

	Stdout io.Writer // the ratio table
	Log    io.Writer // progress
}

type bench struct {
	o       Options
	bin     string
	res     *report.Results
	sampler *proc.Sampler
	start   time.Time
}

func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(b.o.Log, "bench %s: %s\n", time.Since(b.start).Round(time.Second), fmt.Sprintf(format, args...))
}

// target is one server being measured.
type target struct {
	name   string
	url    string
	pids   func() []int // the server's processes, for CPU time
	nars   []load.Nar
	big    []load.Nar
	hashes []string
	// warmed, when set, runs after the warm-up pass (nixcache-local-zstd,
	// -plain: wait for the copies, then take the narinfos naming them).
	warmed func(ctx context.Context, t *target) error
	// warmup is how long the warm-up pass (every NAR, 16 connections)
	// took: the first download of each path.
	warmup time.Duration
}

func (t *target) cpu() time.Duration {
	var sum time.Duration
	for _, p := range t.pids() {
		if d, err := proc.CPUTime(p); err == nil {
			sum += d
		}
	}
	return sum
}

// Run runs the benchmark and writes the results into o.Out as
// <date>.md, <date>.json and <date>.png.
func Run(ctx context.Context, o Options) (*report.Results, error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("the benchmark builds and copies store paths with the real Nix as root (single-user /nix/store); run it as root")
	}
	for _, d := range []string{o.Work, o.Out} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	b := &bench{o: o, start: time.Now(), res: &report.Results{Date: time.Now().UTC(), Mode: o.Mode, Rounds: o.Rounds}}
	b.sampler = proc.NewSampler(50 * time.Millisecond)
	defer b.sampler.Close()
	b.res.Machine = describe(o.Repo, o.Ref)
	b.logf("machine: %d cores, %s, %s, Linux %s", b.res.Machine.Cores, b.res.Machine.CPU, b.res.Machine.MemTotal, b.res.Machine.Kernel)

	if err := b.buildBinaries(ctx); err != nil {
		return nil, err
	}
	if err := b.run(ctx); err != nil {
		return nil, err
	}
	b.res.Duration = time.Since(b.start)
	return b.res, b.write()
}

// buildBinaries builds the services with their symbols (perf needs them;
// `make build` strips them) into Work/bin.
func (b *bench) buildBinaries(ctx context.Context) error {
	b.bin = filepath.Join(b.o.Work, "bin")
	src := b.o.Repo
	if b.o.Ref != "" {
		src = filepath.Join(b.o.Work, "src")
		_ = os.RemoveAll(src)
		if err := os.MkdirAll(src, 0o755); err != nil {
			return err
		}
		export := exec.CommandContext(ctx, "sh", "-c", `git -C "$1" archive --format=tar "$2" | tar -x -C "$3"`, "sh", b.o.Repo, b.o.Ref, src)
		if out, err := export.CombinedOutput(); err != nil {
			return fmt.Errorf("export %s: %w\n%s", b.o.Ref, err, out)
		}
		defer os.RemoveAll(src)
	}
	for _, s := range []string{"signer", "index", "gateway"} {
		cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", filepath.Join(b.bin, "nixcache-"+s), "./services/"+s)
		cmd.Dir = src
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("build nixcache-%s: %w\n%s", s, err, out)
		}
	}
	// The push client, where the source has it (an older -ref may not).
	if _, err := os.Stat(filepath.Join(src, "cmd", "nixcache")); err == nil {
		cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", filepath.Join(b.bin, "nixcache"), "./cmd/nixcache")
		cmd.Dir = src
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("build nixcache: %w\n%s", err, out)
		}
	}
	return nil
}

func (b *bench) run(ctx context.Context) error {
	if b.o.Only == "catalog" {
		return b.catalogPhase(ctx)
	}
	top, err := b.workload(ctx)
	if err != nil {
		return err
	}
	infos, err := b.closure(ctx, top)
	if err != nil {
		return err
	}
	var hashes []string
	for _, pi := range infos {
		hashes = append(hashes, hashPart(pi.Path))
		b.res.Workload.NarBytes += pi.NarSize
	}
	b.res.Workload.Paths, b.res.Workload.TopPath = len(infos), top
	b.res.Workload.Files = map[string]int64{}
	b.logf("workload: %d paths, %.0f MiB of NAR: %s", len(infos), float64(b.res.Workload.NarBytes)/(1<<20), top)
	if b.o.Only == "push" {
		return b.pushPhase(ctx, top)
	}
	// -only serve: no stream gateway, big NAR, push, profiles or catalogue.
	serveOnly := b.o.Only == "serve"
	var big string
	if !serveOnly {
		if big, err = b.bigNar(ctx, b.o.BigMiB); err != nil {
			return err
		}
		b.res.BigSize = int64(b.o.BigMiB) << 20
	}

	// The servers.
	var targets []*target
	var stops []func()
	defer func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}()
	for _, comp := range []string{"none", "zstd"} {
		// As deployed at its fastest: the gateway reads the index's nars/
		// (-nar-dir); a second gateway without it gives the figure of a
		// remote index (every NAR streamed over gRPC), "-stream".
		name := "nixcache-" + comp
		nc, err := b.startNixcache(ctx, name, nil, func(o *servers.NixcacheOptions) {
			o.CoLocated, o.StreamGateway = true, !serveOnly
		})
		if err != nil {
			return err
		}
		stops = append(stops, nc.Stop)
		b.logf("%s: pushing the closure and the big path (co-located gateway: %v)", name, nc.CoLocated)
		if err := b.pushTo(ctx, nc, comp, withBig(top, big)...); err != nil {
			return err
		}
		targets = append(targets, nixcacheTarget(nc))
		b.res.Servers = append(b.res.Servers, report.Server{Name: name, Baseline: "nginx-" + comp, PushBaseline: "file-" + comp})
		if nc.StreamGateway != nil {
			st := streamTarget(nc)
			targets = append(targets, st)
			b.res.Servers = append(b.res.Servers, report.Server{Name: st.name, Baseline: "nginx-" + comp})
		}
	}
	if nc, stop, note, err := b.startLocal(ctx); err != nil {
		return err
	} else if nc == nil {
		b.logf("nixcache-local: not available: %s", note)
		b.res.Servers = append(b.res.Servers, report.Server{Name: "nixcache-local", Baseline: "nginx-none", Unavailable: note})
	} else {
		stops = append(stops, stop)
		targets = append(targets, nixcacheTarget(nc))
		b.res.Servers = append(b.res.Servers, report.Server{Name: "nixcache-local", Baseline: "nginx-none"})
	}
	for _, comp := range []string{"zstd", "none"} {
		name := localCopiesName(comp)
		if t, stop, note, err := b.startLocalCopies(ctx, comp, func() []*target { return targets }); err != nil {
			return err
		} else if t == nil {
			b.logf("%s: not available: %s", name, note)
			b.res.Servers = append(b.res.Servers, report.Server{Name: name, Baseline: "nginx-" + comp, Unavailable: note})
		} else {
			stops = append(stops, stop)
			targets = append(targets, t)
			b.res.Servers = append(b.res.Servers, report.Server{Name: name, Baseline: "nginx-" + comp})
		}
	}
	roots := map[string]string{}
	for _, comp := range []string{"none", "zstd"} {
		dir := filepath.Join(b.o.Work, "static-"+comp)
		_ = os.RemoveAll(dir)
		b.logf("nginx-%s: nix copy --to file://%s?compression=%s", comp, dir, comp)
		paths := []string{top}
		if comp == "none" {
			paths = withBig(top, big)
		}
		if _, err := b.nix(ctx, nixConfig(), "nix", append([]string{"copy", "--to", "file://" + dir + "?compression=" + comp}, paths...)...); err != nil {
			return err
		}
		roots["nginx-"+comp] = dir
		if !b.o.Keep {
			stops = append(stops, func() { os.RemoveAll(dir) })
		}
	}
	ng, err := servers.StartNginx(ctx, filepath.Join(b.o.Work, "nginx"), roots)
	if err != nil {
		return err
	}
	stops = append(stops, ng.Stop)
	for _, comp := range []string{"none", "zstd"} {
		name := "nginx-" + comp
		targets = append(targets, &target{name: name, url: ng.URLs[name], pids: func() []int { return append(ng.Workers(), ng.Master.Pid()) }})
		b.res.Servers = append(b.res.Servers, report.Server{Name: name})
	}
	if !serveOnly {
		b.res.Servers = append(b.res.Servers, pushReferences()...)
	}

	// Warm-up: every narinfo (checking them) and every NAR once.
	for _, t := range targets {
		t.hashes = hashes
		if t.nars, err = load.Narinfos(ctx, t.url, hashes); err != nil {
			return err
		}
		var sum int64
		for _, n := range t.nars {
			sum += int64(n.Size)
		}
		b.res.Workload.Files[t.name] = sum
		start := time.Now()
		if _, err := load.NarPass(ctx, t.url, t.nars, 16); err != nil {
			return err
		}
		t.warmup = time.Since(start)
		if t.warmed != nil {
			if err := t.warmed(ctx, t); err != nil {
				return err
			}
			sum = 0
			for _, n := range t.nars {
				sum += int64(n.Size)
			}
			b.res.Workload.Files[t.name] = sum
		}
		if t.name != "nginx-zstd" && big != "" {
			if t.big, err = load.Narinfos(ctx, t.url, []string{hashPart(big)}); err != nil {
				return err
			}
		}
	}
	b.logf("warm-up done; %d rounds", b.o.Rounds)

	samples := map[string]map[string][]float64{} // server -> figure -> seconds
	cpus := map[string]map[string][]float64{}
	add := func(server, figure string, secs, cpu float64) {
		if samples[server] == nil {
			samples[server], cpus[server] = map[string][]float64{}, map[string][]float64{}
		}
		samples[server][figure] = append(samples[server][figure], secs)
		cpus[server][figure] = append(cpus[server][figure], cpu)
	}
	for round := range b.o.Rounds {
		// A new order every round (seeded: a run can be repeated), so
		// that no server always goes first, nor always right after the
		// same one: a pass that leaves the machine busy for a moment
		// (nixcache-local's dump of 1.5 GB) must not weigh on the
		// figures of one server only, as it did when the order was
		// rotated.
		order := slices.Clone(targets)
		rng := rand.New(rand.NewPCG(uint64(round), 0x6e6978))
		rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
		for _, t := range order {
			c0 := t.cpu()
			tm, err := load.NarinfoPass(ctx, t.url, t.hashes)
			if err != nil {
				return err
			}
			add(t.name, report.Narinfo, tm.Total.Seconds(), (t.cpu() - c0).Seconds())
		}
		// Diagnostic: as many requests for /nix-cache-info, which the
		// gateway answers alone; the difference is the index hop.
		for _, t := range order {
			urls := make([]string, len(t.hashes))
			for i := range urls {
				urls[i] = t.url + "/nix-cache-info"
			}
			c0 := t.cpu()
			tm, err := load.SequentialPass(ctx, t.url, urls)
			if err != nil {
				return err
			}
			add(t.name, report.CacheInfo, tm.Total.Seconds(), (t.cpu() - c0).Seconds())
		}
		for _, conns := range b.o.Conns {
			fig := report.Nar1
			if conns > 1 {
				fig = report.Nar16
			}
			for _, t := range order {
				c0 := t.cpu()
				tm, err := load.NarPass(ctx, t.url, t.nars, conns)
				if err != nil {
					return err
				}
				add(t.name, fig, tm.Total.Seconds(), (t.cpu() - c0).Seconds())
			}
		}
		if !serveOnly {
			if err := b.pushRounds(ctx, round, top, add); err != nil {
				return err
			}
		}
		b.logf("round %d/%d done", round+1, b.o.Rounds)
	}
	for server, figs := range samples {
		for fig, xs := range figs {
			m := report.Measure{Server: server, Figure: fig, Rounds: xs, Median: stats.Median(xs), CPU: stats.Median(cpus[server][fig])}
			if fig == report.Narinfo || fig == report.CacheInfo {
				m.PerRequest = m.Median / float64(len(hashes))
			}
			b.res.Measures = append(b.res.Measures, m)
		}
	}
	slices.SortFunc(b.res.Measures, func(a, c report.Measure) int {
		return strings.Compare(a.Server+a.Figure, c.Server+c.Figure)
	})
	b.res.ComputeRatios()
	if serveOnly {
		if b.o.Profile {
			return b.profilePhase(ctx, targets, ng, false)
		}
		return nil
	}

	if err := b.bigNarPhase(ctx, targets); err != nil {
		return err
	}
	if b.o.Profile {
		if err := b.profilePhase(ctx, targets, ng, true); err != nil {
			return err
		}
	}
	if err := b.catalogPhase(ctx); err != nil {
		return err
	}

	peaks := b.sampler.Peaks()
	var names []string
	for n := range peaks {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		p := peaks[n]
		b.res.Memory = append(b.res.Memory, report.Memory{Name: n, Peak: p, Pass: max(p.RSS, p.HWM) < report.RSSLimit})
	}
	b.res.Notes = append(b.res.Notes,
		"nixcache's services ran as deployed (JSON logs at info level; the gateway logs successful reads at debug, so not); nginx had its access log on.",
		"nixcache-none and nixcache-zstd run co-located, their fastest documented deployment: the gateway reads the index's nars/ (-nar-dir) and sends stored files with sendfile. nixcache-*-stream is a second gateway on the same index without -nar-dir: every NAR streamed over gRPC, as with a remote index. nixcache-local's gateway has -nar-dir and -local-store-dir: it dumps the host's paths from /nix/store itself, large files with sendfile (its index keeps no compressed copies: -host-nar-max-size 0). nixcache-local-zstd is the same deployment with the index's zstd copies of the host's NARs (-host-nar-max-size): measured on the second and later downloads, once the first (the warm-up) has had every copy made; the gateway sends the copies from nars/host/ with sendfile. nixcache-local-plain is the same with plain NAR copies (-host-nar-compression none), against nginx-none, also on second and later downloads.",
		"NAR downloads read bodies into a 256 KiB buffer and discard them; the same client code for every server.",
		"The catalogue's bulk-loaded paths were written into catalog.db in the index's layout (bucket paths: hash part -> indexv1.PathInfo, signed with the cache's key) and read back through the restarted index before measuring.",
		"RssFile of the catalogue index is bbolt's mmap of catalog.db: page cache, shared and reclaimable.")
	return nil
}

// withBig is the paths to push or copy: top, and big unless it is "".
func withBig(top, big string) []string {
	if big == "" {
		return []string{top}
	}
	return []string{top, big}
}

// catalogPhase measures the catalogue at scale (package scale).
func (b *bench) catalogPhase(ctx context.Context) error {
	if len(b.o.CatalogPoints) == 0 {
		return nil
	}
	dir := filepath.Join(b.o.Work, "catalog")
	_ = os.RemoveAll(dir)
	if !b.o.Keep {
		defer os.RemoveAll(dir)
	}
	b.logf("catalogue scale: %v paths", b.o.CatalogPoints)
	c, err := scale.Run(ctx, scale.Options{Bin: b.bin, Dir: dir, Points: b.o.CatalogPoints,
		SignedInserts: b.o.SignedInserts, Lookups: b.o.Lookups, Sampler: b.sampler, Logf: b.logf})
	if err != nil {
		return fmt.Errorf("catalogue scale: %w", err)
	}
	b.res.Catalog = c
	return nil
}

// pushPhase runs the push rounds alone (-only push): nix copy --to
// nixcache against nix copy --to file://, both compressions, and with
// Profile one profiled push.
func (b *bench) pushPhase(ctx context.Context, top string) error {
	for _, comp := range []string{"none", "zstd"} {
		b.res.Servers = append(b.res.Servers, report.Server{Name: "nixcache-" + comp, PushBaseline: "file-" + comp})
	}
	b.res.Servers = append(b.res.Servers, pushReferences()...)
	for round := range b.o.Rounds {
		if err := b.pushRounds(ctx, round, top, b.addMeasure); err != nil {
			return err
		}
		b.logf("round %d/%d done", round+1, b.o.Rounds)
	}
	b.res.ComputeRatios()
	if !b.o.Profile {
		return nil
	}
	if err := prof.Available(); err != nil {
		b.res.Notes = append(b.res.Notes, "no profiles: "+err.Error())
		return nil //nolint:nilerr // no perf here: noted, the run goes on
	}
	b.res.Profiles = map[string]*prof.Profile{}
	return b.profilePush(ctx)
}

// pushReferences are the servers nixcache's push is measured against:
// nix copy --to file://, the baseline, and to a cache that keeps nothing
// (servers.Discard), the floor of any HTTP cache with this Nix, itself
// compared with file://.
func pushReferences() []report.Server {
	return []report.Server{
		{Name: "null-none", PushBaseline: "file-none"}, {Name: "null-zstd", PushBaseline: "file-zstd"},
		{Name: "file-none"}, {Name: "file-zstd"},
	}
}

// pushRounds runs one round of pushes, nix copy --to nixcache against nix
// copy --to file:// and to a cache that keeps nothing, for both
// compressions, rotating which goes first, and adds each figure with add.
func (b *bench) pushRounds(ctx context.Context, round int, top string, add func(server, figure string, secs, cpu float64)) error {
	for i, comp := range []string{"none", "zstd"} {
		pushes := []func() error{
			func() error {
				secs, cpu, err := b.pushRound(ctx, comp, top)
				add("nixcache-"+comp, report.Push, secs, cpu)
				b.logf("push %s to nixcache: %.2f s, services %.2f CPU-s", comp, secs, cpu)
				return err
			},
			func() error {
				secs, err := b.fileRound(ctx, comp, top)
				add("file-"+comp, report.Push, secs, 0)
				b.logf("push %s to file://: %.2f s", comp, secs)
				return err
			},
			func() error {
				secs, repush, cpu, err := b.clientRound(ctx, comp, top)
				if errors.Is(err, errNoClient) {
					return nil
				}
				add("nixcache-"+comp, report.ClientPush, secs, cpu)
				add("nixcache-"+comp, report.Repush, repush, 0)
				if comp == "none" {
					p99, err := b.hookP99(ctx, top)
					if err != nil {
						return err
					}
					add("nixcache-"+comp, report.Hook, p99, 0)
					b.logf("nixcache hook: p99 %.1f ms", p99*1e3)
				}
				b.logf("nixcache push %s to nixcache: %.2f s, services %.2f CPU-s; again, all present: %.3f s", comp, secs, cpu, repush)
				return err
			},
			func() error {
				secs, err := b.nullRound(ctx, comp, top)
				add("null-"+comp, report.Push, secs, 0)
				b.logf("push %s to a cache that keeps nothing: %.2f s", comp, secs)
				return err
			},
		}
		k := (round + i) % len(pushes)
		pushes = append(pushes[k:], pushes[:k]...)
		for _, p := range pushes {
			if err := p(); err != nil {
				return err
			}
		}
	}
	return nil
}

// addMeasure adds one round's figure to the results (medians kept sorted).
func (b *bench) addMeasure(server, figure string, secs, cpu float64) {
	for i := range b.res.Measures {
		m := &b.res.Measures[i]
		if m.Server == server && m.Figure == figure {
			m.Rounds = append(m.Rounds, secs)
			m.CPUs = append(m.CPUs, cpu)
			m.Median, m.CPU = stats.Median(m.Rounds), stats.Median(m.CPUs)
			return
		}
	}
	b.res.Measures = append(b.res.Measures, report.Measure{Server: server, Figure: figure, Rounds: []float64{secs}, CPUs: []float64{cpu}, Median: secs, CPU: cpu})
}

// startNixcache starts a deployment under Work/<name> and samples it.
func (b *bench) startNixcache(ctx context.Context, name string, indexArgs []string, configure ...func(*servers.NixcacheOptions)) (*servers.Nixcache, error) {
	dir := filepath.Join(b.o.Work, name)
	_ = os.RemoveAll(dir)
	o := servers.NixcacheOptions{Bin: b.bin, Dir: dir, Name: name, IndexArgs: indexArgs}
	for _, c := range configure {
		c(&o)
	}
	nc, err := servers.StartNixcache(ctx, o)
	if err != nil {
		return nil, err
	}
	for _, p := range nc.Procs() {
		b.sampler.Watch(p.Name, p.Pid())
	}
	return nc, nil
}

// stopNixcache stops a deployment, keeps its peaks, and removes its data.
func (b *bench) stopNixcache(nc *servers.Nixcache) {
	for _, p := range nc.Procs() {
		b.sampler.Forget(p.Name)
	}
	nc.Stop()
	if !b.o.Keep {
		os.RemoveAll(nc.Dir)
	}
}

// nixcacheTarget is a deployment through its (first) gateway; its CPU is
// that gateway's, the index's and the signer's.
func nixcacheTarget(nc *servers.Nixcache) *target {
	return &target{name: nc.Name, url: nc.URL, pids: pidsOf(nc.Signer, nc.Index, nc.Gateway)}
}

// streamTarget is a deployment through its gateway without -nar-dir.
func streamTarget(nc *servers.Nixcache) *target {
	return &target{name: nc.Name + "-stream", url: nc.StreamURL, pids: pidsOf(nc.Signer, nc.Index, nc.StreamGateway)}
}

func pidsOf(ps ...*proc.Proc) func() []int {
	return func() []int {
		var pids []int
		for _, p := range ps {
			if p != nil {
				pids = append(pids, p.Pid())
			}
		}
		return pids
	}
}

// pushTo copies paths to nc with nix copy.
func (b *bench) pushTo(ctx context.Context, nc *servers.Nixcache, comp string, paths ...string) error {
	netrc, err := nc.Netrc()
	if err != nil {
		return err
	}
	args := append([]string{"copy", "--to", nc.URL + "?compression=" + comp}, paths...)
	_, err = b.nix(ctx, nixConfig("netrc-file = "+netrc), "nix", args...)
	return err
}

// pushRound times one push of the closure to a fresh nixcache.
func (b *bench) pushRound(ctx context.Context, comp, top string) (secs, cpu float64, err error) {
	nc, err := b.startNixcache(ctx, "nixcache-push-"+comp, nil, coLocated)
	if err != nil {
		return 0, 0, err
	}
	defer b.stopNixcache(nc)
	t := nixcacheTarget(nc)
	c0 := t.cpu()
	start := time.Now()
	if err := b.pushTo(ctx, nc, comp, top); err != nil {
		return 0, 0, err
	}
	secs = time.Since(start).Seconds()
	cpu = (t.cpu() - c0).Seconds()
	// The push must have published the top path.
	if _, err := load.Narinfos(ctx, nc.URL, []string{hashPart(top)}); err != nil {
		return 0, 0, fmt.Errorf("after the push: %w", err)
	}
	return secs, cpu, nil
}

// coLocated is the deployment pushes are measured on: the gateway on the
// index's host, sending stored files itself (-nar-dir) and writing
// uploads into files the index hands it (-upload-spool).
func coLocated(o *servers.NixcacheOptions) { o.CoLocated = true }

// errNoClient: the source benchmarked has no cmd/nixcache.
var errNoClient = errors.New("no push client (cmd/nixcache) in this source")

// clientRound times one `nixcache push` of the closure to a fresh
// nixcache, path infos from a nix-daemon of the host store, and then the
// same push again, when the cache has everything (one missing-paths
// request).
func (b *bench) clientRound(ctx context.Context, comp, top string) (secs, repush, cpu float64, err error) {
	client := filepath.Join(b.bin, "nixcache")
	if _, err := os.Stat(client); err != nil {
		return 0, 0, 0, errNoClient
	}
	d, err := servers.StartNixDaemon(ctx, filepath.Join(b.o.Work, "nix-daemon-push"), []string{"NIX_CONFIG=" + nixConfig()})
	if err != nil {
		return 0, 0, 0, err
	}
	defer d.Stop()
	nc, err := b.startNixcache(ctx, "nixcache-client-"+comp, nil, coLocated)
	if err != nil {
		return 0, 0, 0, err
	}
	defer b.stopNixcache(nc)
	netrc, err := nc.Netrc()
	if err != nil {
		return 0, 0, 0, err
	}
	push := func() (float64, error) {
		cmd := exec.CommandContext(ctx, client, "push", "-cache", nc.URL, "-netrc-file", netrc, "-daemon-socket", d.Socket,
			"-compression", comp, "-quiet", "-log-level", "warn", top)
		start := time.Now()
		if out, err := cmd.CombinedOutput(); err != nil {
			return 0, fmt.Errorf("nixcache push: %w\n%s", err, out)
		}
		return time.Since(start).Seconds(), nil
	}
	t := nixcacheTarget(nc)
	c0 := t.cpu()
	if secs, err = push(); err != nil {
		return 0, 0, 0, err
	}
	cpu = (t.cpu() - c0).Seconds()
	if _, err := load.Narinfos(ctx, nc.URL, []string{hashPart(top)}); err != nil {
		return 0, 0, 0, fmt.Errorf("after nixcache push: %w", err)
	}
	if repush, err = push(); err != nil {
		return 0, 0, 0, err
	}
	return secs, repush, cpu, nil
}

// hookRuns is how many times hookP99 runs the hook.
const hookRuns = 200

// hookP99 runs `nixcache hook` as Nix runs a post-build-hook, queueing
// path in a fresh spool, hookRuns times, and returns the 99th percentile
// of its wall time, in seconds.
func (b *bench) hookP99(ctx context.Context, path string) (float64, error) {
	spool := filepath.Join(b.o.Work, "hook-spool.db")
	_ = os.Remove(spool)
	defer os.Remove(spool)
	times := make([]float64, 0, hookRuns)
	for range hookRuns {
		cmd := exec.CommandContext(ctx, filepath.Join(b.bin, "nixcache"), "hook", "-spool", spool)
		cmd.Env = append(os.Environ(), "OUT_PATHS="+path)
		start := time.Now()
		if out, err := cmd.CombinedOutput(); err != nil {
			return 0, fmt.Errorf("nixcache hook: %w\n%s", err, out)
		}
		times = append(times, time.Since(start).Seconds())
	}
	slices.Sort(times)
	return times[len(times)*99/100], nil
}

// fileRound times one nix copy of the closure to a fresh file:// cache.
func (b *bench) fileRound(ctx context.Context, comp, top string) (float64, error) {
	dir := filepath.Join(b.o.Work, "push-file-"+comp)
	_ = os.RemoveAll(dir)
	defer os.RemoveAll(dir)
	start := time.Now()
	if _, err := b.nix(ctx, nixConfig(), "nix", "copy", "--to", "file://"+dir+"?compression="+comp, top); err != nil {
		return 0, err
	}
	return time.Since(start).Seconds(), nil
}

// nullRound times one nix copy of the closure to a cache that keeps
// nothing (servers.Discard).
func (b *bench) nullRound(ctx context.Context, comp, top string) (float64, error) {
	d, err := servers.StartDiscard()
	if err != nil {
		return 0, err
	}
	defer func() { _ = d.Stop() }()
	start := time.Now()
	if _, err := b.nix(ctx, nixConfig(), "nix", "copy", "--to", d.URL+"?compression="+comp, top); err != nil {
		return 0, err
	}
	return time.Since(start).Seconds(), nil
}

// startLocal starts nixcache serving the host store through a nix-daemon
// on a private socket, when the index has that mode.
func (b *bench) startLocal(ctx context.Context) (nc *servers.Nixcache, stop func(), note string, err error) {
	help, _ := exec.CommandContext(ctx, filepath.Join(b.bin, "nixcache-index"), "-h").CombinedOutput()
	if !strings.Contains(string(help), "-local-store") {
		return nil, nil, "this nixcache-index has no -local-store flag (local-store serving not merged yet)", nil
	}
	d, err := servers.StartNixDaemon(ctx, filepath.Join(b.o.Work, "nix-daemon"), nil)
	if err != nil {
		return nil, nil, "", err
	}
	args := []string{"-local-store", "-nix-daemon-socket", d.Socket}
	if strings.Contains(string(help), "-host-nar-max-size") {
		// The uncompressed host store, as before the copies.
		args = append(args, "-host-nar-max-size", "0")
	}
	nc, err = b.startNixcache(ctx, "nixcache-local", args, func(o *servers.NixcacheOptions) {
		o.CoLocated, o.LocalStoreDir = true, "/nix/store"
	})
	if err != nil {
		d.Stop()
		return nil, nil, "", err
	}
	return nc, func() { nc.Stop(); d.Stop() }, "", nil
}

// localCopiesName is the name of the deployment serving the host store
// with copies of compression comp: nixcache-local-zstd, and
// nixcache-local-plain for the plain NARs (none).
func localCopiesName(comp string) string {
	if comp == "none" {
		return "nixcache-local-plain"
	}
	return "nixcache-local-" + comp
}

// startLocalCopies starts nixcache serving the host store with copies of
// its NARs of compression comp (-host-nar-max-size,
// -host-nar-compression), when the index has them. The budget is the
// workload's NAR size: the copies must all fit for the second downloads
// to be measured, and the budget is checked after the rounds. The
// target's warm-up is the first download of every path; then it waits
// until every narinfo names its copy; targets gives the others (for
// nixcache-local's warm-up, compared in the notes).
func (b *bench) startLocalCopies(ctx context.Context, comp string, targets func() []*target) (t *target, stop func(), note string, err error) {
	name := localCopiesName(comp)
	help, _ := exec.CommandContext(ctx, filepath.Join(b.bin, "nixcache-index"), "-h").CombinedOutput()
	if !strings.Contains(string(help), "-host-nar-max-size") {
		return nil, nil, "this nixcache-index keeps no compressed copies of host NARs (-host-nar-max-size)", nil
	}
	if comp != "zstd" && !strings.Contains(string(help), "-host-nar-compression") {
		return nil, nil, "this nixcache-index keeps only zstd copies of host NARs (no -host-nar-compression)", nil
	}
	// The file name a copy's narinfo names: nar/<file hash><ext>, where
	// the nix-serve URL of the uncompressed NAR is
	// nar/<store hash>-<NAR hash>.nar.
	ext, how := ".nar.zst", "zstd level 3"
	if comp == "none" {
		ext, how = ".nar", "plain NARs, -host-nar-compression none"
	}
	namesCopy := func(url string) bool {
		return strings.HasSuffix(url, ext) && !strings.Contains(path.Base(url), "-")
	}
	d, err := servers.StartNixDaemon(ctx, filepath.Join(b.o.Work, "nix-daemon-"+comp), nil)
	if err != nil {
		return nil, nil, "", err
	}
	budget := max(b.res.Workload.NarBytes, 1<<20)
	args := []string{"-local-store", "-nix-daemon-socket", d.Socket, "-host-nar-max-size", strconv.FormatUint(budget, 10)}
	if comp != "zstd" {
		args = append(args, "-host-nar-compression", comp)
	}
	nc, err := b.startNixcache(ctx, name, args, func(o *servers.NixcacheOptions) {
		o.CoLocated, o.LocalStoreDir = true, "/nix/store"
	})
	if err != nil {
		d.Stop()
		return nil, nil, "", err
	}
	t = nixcacheTarget(nc)
	copies := filepath.Join(nc.Dir, "index", "nars", "host")
	t.warmed = func(ctx context.Context, t *target) error {
		start := time.Now()
		deadline := start.Add(30 * time.Minute)
		for {
			nars, err := load.Narinfos(ctx, t.url, t.hashes)
			if err != nil {
				return err
			}
			done := 0
			for _, n := range nars {
				if namesCopy(n.URL) {
					done++
				}
			}
			if done == len(nars) {
				t.nars = nars
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s: %d of %d narinfos name a copy after %s", name, done, len(nars), time.Since(start).Round(time.Second))
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(200 * time.Millisecond):
			}
		}
		used := dirSize(copies)
		b.logf("%s: every copy made %.1f s after the first downloads: %.0f MiB on disk, budget %.0f MiB",
			name, time.Since(start).Seconds(), float64(used)/(1<<20), float64(budget)/(1<<20))
		first := fmt.Sprintf("its first downloads (the warm-up, every NAR uncompressed on 16 connections, %s copies being made meanwhile) took %.3f s", comp, t.warmup.Seconds())
		for _, o := range targets() {
			if o.name == "nixcache-local" && o.warmup > 0 {
				first += fmt.Sprintf(", nixcache-local's (no copies) %.3f s", o.warmup.Seconds())
			}
		}
		b.res.Notes = append(b.res.Notes, fmt.Sprintf("%s: %s; the index had made every copy %.1f s after they ended (%s, one worker at nice 19); they held %.1f MiB on disk against a budget of %.1f MiB (-host-nar-max-size).",
			name, first, time.Since(start).Seconds(), how, float64(used)/(1<<20), float64(budget)/(1<<20)))
		return nil
	}
	stop = func() {
		used := dirSize(copies)
		held := "held"
		if uint64(used) > budget {
			held = "EXCEEDED"
		}
		b.res.Notes = append(b.res.Notes, fmt.Sprintf("%s: after the rounds the copies held %.1f MiB on disk: budget of %.1f MiB %s.",
			name, float64(used)/(1<<20), float64(budget)/(1<<20), held))
		nc.Stop()
		d.Stop()
	}
	return t, stop, "", nil
}

// dirSize is the total size of the regular files under dir.
func dirSize(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, e os.DirEntry, err error) error {
		if err == nil && e.Type().IsRegular() {
			if fi, err := e.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

// bigNarPhase downloads the big NAR from each server that has it, while
// the memory of the server's processes is recorded.
func (b *bench) bigNarPhase(ctx context.Context, targets []*target) error {
	for _, t := range targets {
		if len(t.big) == 0 {
			continue
		}
		var names []string
		for n := range b.sampler.Peaks() {
			if strings.HasPrefix(n, t.name+"/") {
				names = append(names, n)
			}
		}
		before := map[string]proc.Mem{}
		for _, n := range names {
			before[n] = b.memOf(n)
		}
		b.sampler.Record(names...)
		start := time.Now()
		tm, err := load.NarPass(ctx, t.url, t.big, 1)
		if err != nil {
			return err
		}
		secs := time.Since(start).Seconds()
		series := b.sampler.Recorded()
		bn := report.BigNar{Server: t.name, Bytes: tm.Bytes, Seconds: secs, Before: before, Max: map[string]proc.Mem{}, Series: series, Flat: true}
		for _, n := range names {
			var mx proc.Mem
			for _, s := range series[n] {
				mx.RSS = max(mx.RSS, s.Mem.RSS)
				mx.RssAnon = max(mx.RssAnon, s.Mem.RssAnon)
				mx.RssFile = max(mx.RssFile, s.Mem.RssFile)
				mx.HWM = max(mx.HWM, s.Mem.HWM)
			}
			bn.Max[n] = mx
			if mx.RSS >= before[n].RSS+report.FlatLimit {
				bn.Flat = false
			}
		}
		b.logf("big NAR from %s: %.2f s", t.name, secs)
		b.res.BigNars = append(b.res.BigNars, bn)
	}
	return nil
}

// memOf reads the current memory of a sampled process by name.
func (b *bench) memOf(name string) proc.Mem {
	b.sampler.Record(name)
	time.Sleep(120 * time.Millisecond) // two samples
	rec := b.sampler.Recorded()[name]
	if len(rec) == 0 {
		return proc.Mem{}
	}
	return rec[len(rec)-1].Mem
}

// profiled are the servers profilePhase perfs: the uncompressed ones in
// every pass, the zstd ones (pushed, host copies, nginx) in the NAR pass
// on one connection, where small files make the cost per request show.
var profiled = map[string]bool{"nixcache-none": true, "nginx-none": true, "nixcache-local": true,
	"nixcache-zstd": false, "nixcache-local-zstd": false, "nginx-zstd": false}

// profilePhase perfs the servers named in profiled during extra passes
// of the narinfo and NAR figures, and with push a push.
func (b *bench) profilePhase(ctx context.Context, targets []*target, ng *servers.Nginx, push bool) error {
	if err := prof.Available(); err != nil {
		b.res.Notes = append(b.res.Notes, "no profiles: "+err.Error())
		return nil //nolint:nilerr // no perf here: noted, the run goes on
	}
	b.res.Profiles = map[string]*prof.Profile{}
	dir := filepath.Join(b.o.Work, "perf")
	for _, t := range targets {
		every, ok := profiled[t.name]
		if !ok {
			continue
		}
		passes := []struct {
			label string
			run   func() error
		}{
			{"narinfo", func() error { _, err := load.NarinfoPass(ctx, t.url, t.hashes); return err }},
			{"NAR 1 conn", func() error { _, err := load.NarPass(ctx, t.url, t.nars, 1); return err }},
			{"NAR 16 conn", func() error { _, err := load.NarPass(ctx, t.url, t.nars, 16); return err }},
		}
		for _, p := range passes {
			if !every && p.label != "NAR 1 conn" {
				continue
			}
			label := t.name + ", " + p.label
			rec, err := prof.Record(ctx, dir, strings.NewReplacer(" ", "-", ",", "").Replace(label), t.pids())
			if err != nil {
				return err
			}
			// At least 3 s of samples.
			for start := time.Now(); time.Since(start) < 3*time.Second; {
				if err := p.run(); err != nil {
					_, _ = rec.Stop()
					return err
				}
			}
			pr, err := rec.Stop()
			if err != nil {
				return err
			}
			b.res.Profiles[label] = pr
			b.logf("profiled %s", label)
		}
	}
	if !push {
		return nil
	}
	return b.profilePush(ctx)
}

// profilePush perfs one push of the closure (compression=none) to a fresh
// deployment.
func (b *bench) profilePush(ctx context.Context) error {
	dir := filepath.Join(b.o.Work, "perf")
	nc, err := b.startNixcache(ctx, "nixcache-push-none", nil, coLocated)
	if err != nil {
		return err
	}
	defer b.stopNixcache(nc)
	rec, err := prof.Record(ctx, dir, "push", nixcacheTarget(nc).pids())
	if err != nil {
		return err
	}
	if err := b.pushTo(ctx, nc, "none", b.res.Workload.TopPath); err != nil {
		_, _ = rec.Stop()
		return err
	}
	pr, err := rec.Stop()
	if err != nil {
		return err
	}
	b.res.Profiles["nixcache-none, push (nix copy --to, compression=none)"] = pr
	b.logf("profiled a push")
	if !b.o.Keep {
		os.RemoveAll(dir)
	}
	return nil
}

// Render writes the .md and .png of a results .json again.
func Render(jsonPath string) error {
	r, err := report.ReadJSON(jsonPath)
	if err != nil {
		return err
	}
	r.ComputeRatios()
	base := strings.TrimSuffix(jsonPath, ".json")
	if a, err := os.ReadFile(base + "-analysis.md"); err == nil {
		r.Analysis = string(a)
	}
	var md strings.Builder
	r.Markdown(&md)
	if err := os.WriteFile(base+".md", []byte(md.String()), 0o644); err != nil {
		return err
	}
	return r.WritePNG(base + ".png")
}

// write writes the results files and prints the ratio table.
func (b *bench) write() error {
	base := filepath.Join(b.o.Out, b.res.Date.Format("2006-01-02"))
	if b.o.Mode != "full" {
		base += "-" + b.o.Mode
	}
	var md strings.Builder
	b.res.Markdown(&md)
	if err := os.WriteFile(base+".md", []byte(md.String()), 0o644); err != nil {
		return err
	}
	if err := b.res.WriteJSON(base + ".json"); err != nil {
		return err
	}
	if err := b.res.WritePNG(base + ".png"); err != nil {
		return err
	}
	fmt.Fprintf(b.o.Stdout, "\nnixcache vs nginx (%s run, median of %d rounds, %d paths, %.0f MiB; lower is better)\n\n",
		b.o.Mode, b.o.Rounds, b.res.Workload.Paths, float64(b.res.Workload.NarBytes)/(1<<20))
	b.res.RatioTable(b.o.Stdout)
	fmt.Fprintf(b.o.Stdout, "\nresults: %s.md, .json, .png\n", base)
	return nil
}

// hashPart is the hash part of an absolute store path.
func hashPart(path string) string {
	base := filepath.Base(path)
	if len(base) < 32 {
		return base
	}
	return base[:32]
}

// describe says what machine this is.
func describe(repo, ref string) report.Machine {
	m := report.Machine{Cores: runtime.NumCPU(), Go: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "MemTotal:" {
				kb, _ := strconv.ParseFloat(f[1], 64)
				m.MemTotal = fmt.Sprintf("%.1f GiB", kb/(1<<20))
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if out, err := exec.Command("nix", "--version").Output(); err == nil {
		m.Nix = strings.TrimSpace(string(out))
	}
	if out, err := exec.Command("nginx", "-v").CombinedOutput(); err == nil {
		m.Nginx = strings.TrimSpace(string(out))
	}
	rev := ref
	if rev == "" {
		rev = "HEAD"
	}
	if out, err := exec.Command("git", "-C", repo, "rev-parse", "--short", rev).Output(); err == nil {
		m.Commit = strings.TrimSpace(string(out))
		st, err := exec.Command("git", "-C", repo, "status", "--porcelain", "--", "services", "nix", "platform", "proto").Output()
		if ref == "" && err == nil && len(st) > 0 {
			m.Commit += " plus uncommitted changes"
		}
	}
	if out, err := exec.Command("df", "-T", "/tmp").Output(); err == nil {
		if lines := strings.Split(strings.TrimSpace(string(out)), "\n"); len(lines) == 2 {
			if f := strings.Fields(lines[1]); len(f) > 1 {
				m.Filesystem = f[1]
			}
		}
	}
	return m
}
