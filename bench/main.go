// Command bench is nixcache's benchmark: the cache shootout against nginx
// (bench/README.md). `make bench` runs it in full and writes
// bench/results/<date>.{md,json,png}; `make bench-smoke` runs a tiny
// version (a few paths, one round) that CI runs so the benchmark keeps
// working.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/nixcache/nixcache/bench/internal/shootout"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	smoke := fs.Bool("smoke", false, "tiny run for CI: 5 paths, 1 round, small catalogue, no profiles; results in -work")
	repo := fs.String("repo", ".", "the nixcache repository (its services are built from here)")
	ref := fs.String("ref", "", "git revision whose services are measured (default: the working tree)")
	work := fs.String("work", filepath.Join(os.TempDir(), "nixcache-bench"), "scratch directory: binaries, workload, every server's data")
	out := fs.String("out", "bench/results", "directory of the results (<date>.md, .json, .png); with -smoke, default <work>/results")
	paths := fs.Int("paths", 370, "store paths in the workload closure")
	mib := fs.Int("mib", 1500, "MiB of files in the workload closure (gen-closure.py's target)")
	rounds := fs.Int("rounds", 5, "timed rounds; every figure is their median")
	bigMiB := fs.Int("big-mib", 2048, "size of the single large NAR, MiB")
	points := fs.String("catalog-points", "10000,1000000", "catalogue sizes measured, comma-separated; empty skips the catalogue")
	signed := fs.Int("signed-inserts", 10000, "catalogue paths inserted through PutPathInfo (the rest are bulk-loaded)")
	lookups := fs.Int("lookups", 20000, "random lookups per catalogue size and per way")
	profile := fs.Bool("profile", true, "profile the nixcache services with perf during extra passes")
	keep := fs.Bool("keep", false, "keep the servers' data in -work")
	only := fs.String("only", "", `run one part alone: "catalog" (the catalogue scale, no workload), "push" (the push rounds against nix copy --to file://, and with -profile a profiled push) or "serve" (narinfo and NAR passes of the co-located nixcache-none/zstd, nixcache-local, nixcache-local-zstd and nixcache-local-plain against nginx); results named <date>-<part>`)
	render := fs.String("render", "", "only write the .md and .png again from this results .json (after a change to the report)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *render != "" {
		return shootout.Render(*render)
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	o := shootout.Options{
		Mode: "full", Paths: *paths, MiB: *mib, Rounds: *rounds, BigMiB: *bigMiB, Conns: []int{1, 16},
		Ref: *ref, SignedInserts: *signed, Lookups: *lookups, Profile: *profile, Keep: *keep,
		Stdout: os.Stdout, Log: os.Stderr,
	}
	if *smoke {
		o.Mode = "smoke"
		def := func(name string, dst *int, v int) {
			if !set[name] {
				*dst = v
			}
		}
		def("paths", &o.Paths, 5)
		def("mib", &o.MiB, 16)
		def("rounds", &o.Rounds, 1)
		def("big-mib", &o.BigMiB, 64)
		def("signed-inserts", &o.SignedInserts, 500)
		def("lookups", &o.Lookups, 2000)
		if !set["catalog-points"] {
			*points = "500,5000"
		}
		if !set["profile"] {
			o.Profile = false
		}
		if !set["out"] {
			*out = filepath.Join(*work, "results")
		}
	}
	for _, p := range strings.Split(*points, ",") {
		if p = strings.TrimSpace(p); p == "" {
			continue
		}
		n, err := strconv.Atoi(p)
		if err != nil || n <= 0 || (len(o.CatalogPoints) > 0 && n <= o.CatalogPoints[len(o.CatalogPoints)-1]) {
			return fmt.Errorf("-catalog-points %q: want ascending positive counts", *points)
		}
		o.CatalogPoints = append(o.CatalogPoints, n)
	}
	switch *only {
	case "":
	case "catalog", "push", "serve":
		// A partial run must not overwrite a full run's results.
		o.Only, o.Mode = *only, o.Mode+"-"+*only
	default:
		return fmt.Errorf("-only %q: want catalog, push or serve", *only)
	}
	if o.Paths <= 0 || o.MiB <= 0 || o.Rounds <= 0 || o.BigMiB <= 0 || o.Lookups <= 0 || o.SignedInserts < 0 {
		return errors.New("-paths, -mib, -rounds, -big-mib and -lookups must be positive")
	}
	var err error
	if o.Repo, err = filepath.Abs(*repo); err != nil {
		return err
	}
	if o.Work, err = filepath.Abs(*work); err != nil {
		return err
	}
	if o.Out, err = filepath.Abs(*out); err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	_, err = shootout.Run(ctx, o)
	return err
}
