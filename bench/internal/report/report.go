// Package report holds what one benchmark run measured and writes it out:
// a Markdown table of ratios to nginx with pass/miss against the targets,
// the same as JSON, and a PNG plot.
package report

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/nixcache/nixcache/bench/internal/proc"
	"github.com/nixcache/nixcache/bench/internal/prof"
	"github.com/nixcache/nixcache/bench/internal/scale"
)

// Figures, in table order.
const (
	Narinfo = "narinfo"
	Nar1    = "nar-1conn"
	Nar16   = "nar-16conn"
	Push    = "push"
	// ClientPush is the push of the closure with the project's client,
	// `nixcache push`, to the same deployment as Push.
	ClientPush = "client-push"
	// Repush is a diagnostic: `nixcache push` of the closure again, when
	// the cache has all of it (seconds, no ratio).
	Repush = "repush"
	// Hook is a diagnostic: the 99th percentile of `nixcache hook`, the
	// post-build hook queueing a path (seconds, no ratio).
	Hook = "hook-p99"
	// CacheInfo is a diagnostic: GET /nix-cache-info as often as there
	// are narinfos, which the gateway answers without the index.
	CacheInfo = "cacheinfo"
)

// Figures lists the figures in table order.
var Figures = []string{Narinfo, Nar1, Nar16, Push, ClientPush}

// FigureTitle is a figure's human name.
var FigureTitle = map[string]string{
	Narinfo:    "narinfo, sequential, 1 connection",
	Nar1:       "every NAR, 1 connection",
	Nar16:      "every NAR, 16 connections",
	Push:       "push (`nix copy --to`)",
	ClientPush: "push (`nixcache push`)",
}

// Target is the most a figure may be, as a multiple of its baseline.
var Target = map[string]float64{Narinfo: 1.15, Nar1: 1.5, Nar16: 1.2, Push: 1.3, ClientPush: 1.0}

// RSS targets.
const (
	RSSLimit   = 128 << 20 // every service, the whole run
	FlatLimit  = 32 << 20  // growth while the big NAR streams
	LookupP99  = 2 * time.Millisecond
	BytesLimit = 1024 // bbolt bytes per path
)

// Machine describes where the run took place.
type Machine struct {
	CPU        string `json:"cpu"`
	Cores      int    `json:"cores"`
	MemTotal   string `json:"memory"`
	Kernel     string `json:"kernel"`
	Go         string `json:"go"`
	Nix        string `json:"nix"`
	Nginx      string `json:"nginx"`
	Commit     string `json:"commit"`
	Filesystem string `json:"work_dir_filesystem"`
}

// Server is one server of the comparison.
type Server struct {
	Name string `json:"name"`
	// Baseline names the nginx server it is compared with ("" for nginx).
	Baseline string `json:"baseline,omitempty"`
	// Unavailable says why the server was skipped ("" when it ran).
	Unavailable string `json:"unavailable,omitempty"`
	// PushBaseline names the file:// copy the push is compared with.
	PushBaseline string `json:"push_baseline,omitempty"`
}

// Measure is one figure of one server, every round.
type Measure struct {
	Server string    `json:"server"`
	Figure string    `json:"figure"`
	Rounds []float64 `json:"rounds_seconds"`
	Median float64   `json:"median_seconds"`
	// CPU is the median CPU time the server's processes used per round.
	CPU float64 `json:"median_server_cpu_seconds,omitempty"`
	// CPUs are the rounds' CPU times, when recorded.
	CPUs []float64 `json:"rounds_server_cpu_seconds,omitempty"`
	// PerRequest is Median divided by the requests of a round (narinfo).
	PerRequest float64 `json:"per_request_seconds,omitempty"`
}

// Ratio compares a server's figure with its baseline's.
type Ratio struct {
	Server   string  `json:"server"`
	Figure   string  `json:"figure"`
	Baseline string  `json:"baseline"`
	Ratio    float64 `json:"ratio"`
	Target   float64 `json:"target"`
	Pass     bool    `json:"pass"`
}

// Memory is the peak memory of one service process over the run.
type Memory struct {
	Name string   `json:"name"`
	Peak proc.Mem `json:"peak"`
	Pass bool     `json:"pass"`
}

// BigNar is one download of the single large NAR.
type BigNar struct {
	Server  string                   `json:"server"`
	Bytes   int64                    `json:"bytes"`
	Seconds float64                  `json:"seconds"`
	Before  map[string]proc.Mem      `json:"before"`
	Max     map[string]proc.Mem      `json:"max_during"`
	Series  map[string][]proc.Sample `json:"series,omitempty"`
	Flat    bool                     `json:"flat"`
}

// Results is everything one run measured.
type Results struct {
	Date     time.Time `json:"date"`
	Mode     string    `json:"mode"` // "full" or "smoke", with "-<part>" for a run of one part (-only)
	Machine  Machine   `json:"machine"`
	Rounds   int       `json:"rounds"`
	Workload struct {
		Paths    int              `json:"paths"`
		NarBytes uint64           `json:"nar_bytes"`
		Files    map[string]int64 `json:"file_bytes_per_server"`
		TopPath  string           `json:"top_path"`
	} `json:"workload"`
	Servers  []Server                 `json:"servers"`
	Measures []Measure                `json:"measures"`
	Ratios   []Ratio                  `json:"ratios"`
	Memory   []Memory                 `json:"memory"`
	BigNars  []BigNar                 `json:"big_nar"`
	BigSize  int64                    `json:"big_nar_bytes"`
	Catalog  *scale.Result            `json:"catalog,omitempty"`
	Profiles map[string]*prof.Profile `json:"profiles,omitempty"`
	Notes    []string                 `json:"notes"`
	Duration time.Duration            `json:"duration_ns"`
	// Analysis is hand-written (<date>-analysis.md beside the results),
	// rendered before the profiles.
	Analysis string `json:"-"`
}

// Measure returns the named measure, or nil.
func (r *Results) Measure(server, figure string) *Measure {
	for i := range r.Measures {
		if r.Measures[i].Server == server && r.Measures[i].Figure == figure {
			return &r.Measures[i]
		}
	}
	return nil
}

// ComputeRatios fills Ratios from the medians.
func (r *Results) ComputeRatios() {
	r.Ratios = nil
	for _, s := range r.Servers {
		if !s.compared() || s.Unavailable != "" {
			continue
		}
		for _, f := range Figures {
			base := s.Baseline
			if f == Push || f == ClientPush {
				base = s.PushBaseline
			}
			if base == "" {
				continue
			}
			baseFig := f
			if f == ClientPush {
				baseFig = Push // file:// is filled by nix copy
			}
			m, b := r.Measure(s.Name, f), r.Measure(base, baseFig)
			if m == nil || b == nil || b.Median == 0 {
				continue
			}
			ratio := m.Median / b.Median
			r.Ratios = append(r.Ratios, Ratio{Server: s.Name, Figure: f, Baseline: base, Ratio: ratio,
				Target: Target[f], Pass: ratio <= Target[f]})
		}
	}
}

// Ratio returns the named ratio, or nil.
func (r *Results) Ratio(server, figure string) *Ratio {
	for i := range r.Ratios {
		if r.Ratios[i].Server == server && r.Ratios[i].Figure == figure {
			return &r.Ratios[i]
		}
	}
	return nil
}

// ReadJSON reads results WriteJSON wrote.
func ReadJSON(path string) (*Results, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	r := new(Results)
	if err := json.Unmarshal(b, r); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return r, nil
}

// WriteJSON writes the results as indented JSON.
func (r *Results) WriteJSON(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

func passMiss(ok bool) string {
	if ok {
		return "pass"
	}
	return "**miss**"
}

func mib(b uint64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// RatioTable writes the headline table: each nixcache server's ratio to
// its baseline per figure, with the target and pass/miss.
func (r *Results) RatioTable(w io.Writer) {
	var names []string
	for _, s := range r.Servers {
		if s.compared() {
			names = append(names, s.Name)
		}
	}
	fmt.Fprintf(w, "| figure | target |")
	for _, n := range names {
		fmt.Fprintf(w, " %s |", n)
	}
	fmt.Fprintf(w, "\n|---|---|%s\n", strings.Repeat("---|", len(names)))
	for _, f := range Figures {
		fmt.Fprintf(w, "| %s | ≤ %.2fx |", FigureTitle[f], Target[f])
		for _, n := range names {
			s := r.server(n)
			ra := r.Ratio(n, f)
			switch {
			case s.Unavailable != "":
				fmt.Fprintf(w, " not available |")
			case ra == nil:
				fmt.Fprintf(w, " – |")
			default:
				fmt.Fprintf(w, " %.2fx %s |", ra.Ratio, passMiss(ra.Pass))
			}
		}
		fmt.Fprintln(w)
	}
}

func (r *Results) server(name string) Server {
	for _, s := range r.Servers {
		if s.Name == name {
			return s
		}
	}
	return Server{Name: name}
}

// Markdown writes the whole results file.
func (r *Results) Markdown(w io.Writer) {
	m := r.Machine
	fmt.Fprintf(w, "# nixcache benchmark, %s (%s)\n\n", r.Date.Format("2006-01-02"), r.Mode)
	fmt.Fprintf(w, "Made by `make bench` (bench/, see bench/README.md). Every figure is the median of %d rounds "+
		"of one run, the servers interleaved on one machine, after a warm-up pass; ratios are to nginx serving a "+
		"`nix copy --to file://` copy of the same closure with the same compression (push: to `nix copy --to file://`).\n\n", r.Rounds)
	fmt.Fprintf(w, "Machine: %d cores, %s, %s RAM, Linux %s, %s, %s, %s; nixcache at %s; run took %s.\n\n",
		m.Cores, m.CPU, m.MemTotal, m.Kernel, m.Go, m.Nix, m.Nginx, m.Commit, r.Duration.Round(time.Second))
	fmt.Fprintf(w, "Workload: %d store paths, %s of NAR (%s).\n\n", r.Workload.Paths, mib(r.Workload.NarBytes), r.Workload.TopPath)

	fmt.Fprintf(w, "## Ratios to nginx (lower is better)\n\n")
	r.RatioTable(w)
	fmt.Fprintln(w)
	for _, s := range r.Servers {
		if s.Unavailable != "" {
			fmt.Fprintf(w, "%s: not available: %s\n\n", s.Name, s.Unavailable)
		}
	}

	fmt.Fprintf(w, "## Medians\n\n| server | narinfo (µs/req) | NAR 1 conn (s) | NAR 16 conn (s) | push (s) | nixcache push (s) | server CPU-s: narinfo / NAR 1 / NAR 16 / push / nixcache push |\n|---|---|---|---|---|---|---|\n")
	for _, s := range r.Servers {
		if s.Unavailable != "" {
			continue
		}
		fmt.Fprintf(w, "| %s |", s.Name)
		var cpus []string
		for _, f := range Figures {
			me := r.Measure(s.Name, f)
			if me == nil {
				fmt.Fprintf(w, " – |")
				cpus = append(cpus, "–")
				continue
			}
			if f == Narinfo {
				fmt.Fprintf(w, " %.0f |", me.PerRequest*1e6)
			} else {
				fmt.Fprintf(w, " %.3f |", me.Median)
			}
			cpus = append(cpus, fmt.Sprintf("%.2f", me.CPU))
		}
		fmt.Fprintf(w, " %s |\n", strings.Join(cpus, " / "))
	}
	r.pushNotes(w)
	fmt.Fprintf(w, "\n### The narinfo figure taken apart\n\n"+
		"The same number of sequential requests for `/nix-cache-info`, which the gateway answers itself (nginx: a static file), "+
		"gives the cost of the HTTP side alone; the rest of a narinfo is the index hop (gRPC GetPathInfo and its bbolt read) and rendering.\n\n"+
		"| server | /nix-cache-info (µs/req) | narinfo (µs/req) | narinfo − nix-cache-info |\n|---|---|---|---|\n")
	for _, s := range r.Servers {
		ci, ni := r.Measure(s.Name, CacheInfo), r.Measure(s.Name, Narinfo)
		if ci == nil || ni == nil {
			continue
		}
		fmt.Fprintf(w, "| %s | %.0f | %.0f | %.0f |\n", s.Name, ci.PerRequest*1e6, ni.PerRequest*1e6, (ni.PerRequest-ci.PerRequest)*1e6)
	}
	fmt.Fprintf(w, "\nNAR bytes per round: ")
	var fb []string
	for name, b := range r.Workload.Files {
		fb = append(fb, fmt.Sprintf("%s %s", name, mib(uint64(b))))
	}
	slices.Sort(fb)
	fmt.Fprintf(w, "%s. Server CPU is user+system time of the server's processes during the timed pass "+
		"(nixcache: gateway+index+signer; nginx: master+workers; push: nix copy's own CPU is not counted).\n\n", strings.Join(fb, ", "))

	fmt.Fprintf(w, "## Memory (peak over the whole run, every nixcache process)\n\n"+
		"VmRSS counts mapped files too (RssFile: the binary, and bbolt's mmap of catalog.db, which is page cache); RssAnon is the process's own memory.\n\n"+
		"| process | peak VmRSS | VmHWM | RssAnon | RssFile | VmHWM < 128 MiB | RssAnon < 128 MiB |\n|---|---|---|---|---|---|---|\n")
	for _, mem := range r.Memory {
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s |\n", mem.Name, mib(mem.Peak.RSS), mib(mem.Peak.HWM),
			mib(mem.Peak.RssAnon), mib(mem.Peak.RssFile), passMiss(mem.Pass), passMiss(mem.Peak.RssAnon < RSSLimit))
	}
	fmt.Fprintln(w)
	if len(r.BigNars) > 0 {
		fmt.Fprintf(w, "### One NAR of %s, downloaded while RSS is sampled every 50 ms\n\n", mib(uint64(r.BigSize)))
		fmt.Fprintf(w, "| server | time | process | RSS before | max RSS during | flat (growth < 32 MiB) |\n|---|---|---|---|---|---|\n")
		for _, b := range r.BigNars {
			var roles []string
			for k := range b.Max {
				roles = append(roles, k)
			}
			slices.Sort(roles)
			for _, role := range roles {
				before, mx := b.Before[role], b.Max[role]
				fmt.Fprintf(w, "| %s | %.2f s (%.0f MiB/s) | %s | %s | %s | %s |\n", b.Server, b.Seconds,
					float64(b.Bytes)/(1<<20)/max(b.Seconds, 1e-9), role, mib(before.RSS), mib(mx.RSS),
					passMiss(mx.RSS < before.RSS+FlatLimit && mx.RSS < RSSLimit))
			}
		}
		fmt.Fprintln(w)
	}

	if c := r.Catalog; c != nil {
		fmt.Fprintf(w, "## Catalogue scale\n\n")
		fmt.Fprintf(w, "%d synthetic paths published through `PutPathInfo` (checked, signed, one bbolt transaction each) "+
			"in %s: %.0f paths/s (so %.0f min for 1,000,000); the rest (%d) bulk-loaded into catalog.db in %s.\n\n",
			c.SignedInserts, c.SignedInsertTime.Round(time.Millisecond), c.SignedPerSecond(),
			1e6/c.SignedPerSecond()/60, c.BulkInserts, c.BulkInsertTime.Round(time.Millisecond))
		fmt.Fprintf(w, "| paths | gateway narinfo p50 | p99 (< 2 ms) | gRPC GetPathInfo p50 | p99 | index start-up | catalog.db | file bytes/path (< 1 KiB) | paths bucket: pages allocated / in use / value, per path; other buckets allocated | index RSS after (anon / file) |\n|---|---|---|---|---|---|---|---|---|---|\n")
		for _, p := range c.Points {
			fmt.Fprintf(w, "| %d | %s | %s %s | %s | %s | %s | %s | %.0f %s | %.0f / %.0f / %.0f B; %.0f B | %s / %s |\n", p.Paths,
				us(p.Gateway.P50), us(p.Gateway.P99), passMiss(p.Gateway.P99 < LookupP99), us(p.GRPC.P50), us(p.GRPC.P99),
				startup(p), mib(uint64(p.DBBytes)), p.BytesPerPath, passMiss(p.BytesPerPath < BytesLimit),
				p.DB.AllocBytes, p.DB.InuseBytes, p.DB.ValueBytes, p.DB.OtherAllocBytes, mib(p.IndexMem.RssAnon), mib(p.IndexMem.RssFile))
		}
		fmt.Fprintf(w, "\nFile bytes/path is catalog.db's size over the paths (bbolt grows the file by doubling up to 1 GiB, then by 1 GiB); "+
			"allocated is the pages of the paths bucket, in use the bytes of them holding data; value is a stored path record (a marshalled indexv1.PathInfo up to catalogue schema 1, a compact record from schema 2); "+
			"other buckets are the NAR files, referrers and counters. Start-up is a restart of the index; after a bulk load, the first start (in brackets) migrated the bulk-loaded records.\n")
		if n := len(c.Points); n >= 2 {
			a, b := c.Points[0], c.Points[n-1]
			fmt.Fprintf(w, "\nFrom %d to %d paths the gateway's p50 went %s → %s (%.2fx), gRPC p50 %s → %s (%.2fx).\n",
				a.Paths, b.Paths, us(a.Gateway.P50), us(b.Gateway.P50), float64(b.Gateway.P50)/float64(a.Gateway.P50),
				us(a.GRPC.P50), us(b.GRPC.P50), float64(b.GRPC.P50)/float64(a.GRPC.P50))
		}
		fmt.Fprintln(w)
	}

	if len(r.Notes) > 0 {
		fmt.Fprintf(w, "## Notes\n\n")
		for _, n := range r.Notes {
			fmt.Fprintf(w, "- %s\n", n)
		}
		fmt.Fprintln(w)
	}
	if r.Analysis != "" {
		fmt.Fprintf(w, "## Analysis\n\n%s\n\n", strings.TrimSpace(r.Analysis))
	}
	if len(r.Profiles) > 0 {
		fmt.Fprintf(w, "## Profiles (perf, 999 Hz, CPU samples of the server's processes during extra untimed passes of at least 3 s)\n\n")
		var keys []string
		for k := range r.Profiles {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			r.Profiles[k].Markdown(w, k)
		}
	}
}

func us(d time.Duration) string { return fmt.Sprintf("%.0f µs", float64(d)/1e3) }

// startup is the index's start-up at a catalogue point, with the first
// start after a bulk load (a migration) when there was one.
func startup(p scale.Point) string {
	s := p.Startup.Round(time.Millisecond).String()
	if p.Migration > 0 {
		s += fmt.Sprintf(" (%s)", p.Migration.Round(time.Millisecond))
	}
	return s
}

// compared reports whether the server is measured against a baseline (a
// nixcache server; with -only push, against file:// alone).
func (s Server) compared() bool { return s.Baseline != "" || s.PushBaseline != "" }

// pushNotes writes the server CPU per pushed GiB of each push, and the
// re-push of a closure the cache has all of.
func (r *Results) pushNotes(w io.Writer) {
	gib := float64(r.Workload.NarBytes) / (1 << 30)
	var lines []string
	for _, s := range r.Servers {
		for _, f := range []string{Push, ClientPush} {
			if me := r.Measure(s.Name, f); me != nil && me.CPU > 0 && gib > 0 {
				lines = append(lines, fmt.Sprintf("%s, %s: %.1f server CPU-s per pushed GiB (uncompressed NAR)", s.Name, FigureTitle[f], me.CPU/gib))
			}
		}
		if me := r.Measure(s.Name, Hook); me != nil {
			lines = append(lines, fmt.Sprintf("%s: `nixcache hook` (queue a path: process start, bbolt commit with its fsyncs) p99 %.1f ms, target ≤ 20 ms", s.Name, me.Median*1e3))
		}
		if me := r.Measure(s.Name, Repush); me != nil {
			lines = append(lines, fmt.Sprintf("%s: `nixcache push` again, every path present (one missing-paths request): %.3f s", s.Name, me.Median))
		}
	}
	if len(lines) > 0 {
		fmt.Fprintf(w, "\n- %s\n", strings.Join(lines, "\n- "))
	}
}
