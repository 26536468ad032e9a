package app

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nixcache/nixcache/services/index/internal/artifact"
	"github.com/nixcache/nixcache/services/index/internal/catalog"
	"github.com/nixcache/nixcache/services/index/internal/consistency"
	"github.com/nixcache/nixcache/services/index/internal/narstore"
)

// startupCheck runs the consistency check before the index serves and
// logs its report: one info line, "startup check", plus a warning per
// repair (package consistency). leftovers is how many unfinished uploads
// opening the stores removed from tmp/.
func startupCheck(ctx context.Context, log *slog.Logger, cat *catalog.Catalog, nars *narstore.Store, leftovers int) (consistency.Report, error) {
	r, err := consistency.Check(ctx, cat, nars, log.With("component", "startup-check"))
	if err != nil {
		return r, err
	}
	log.InfoContext(ctx, "startup check", "mismatches", r.Mismatches(),
		"quarantined_paths", r.QuarantinedPaths, "incomplete_paths", r.IncompletePaths, "host_only_paths", r.HostOnlyPaths, "dropped_nar_files", r.DroppedNarFiles, "orphans", r.Orphans,
		"leftover_uploads", leftovers, "paths", r.Paths, "nar_files", r.NarFiles, "files", r.Files,
		"duration", r.Duration)
	return r, nil
}

// registerStartupCheck exports the report of the check this process ran.
func registerStartupCheck(reg prometheus.Registerer, r consistency.Report, leftovers int) error {
	mismatches := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "nixcache", Subsystem: "index", Name: "startup_check_mismatches",
		Help: `What the startup check found disagreeing between the catalogue and the NAR files, and repaired, by kind: "quarantined_path" (its NAR file missing or of another size, or it refers to such a path), "incomplete_closure" (a published path whose references are not all published, quarantined with its referrers), "dropped_nar_file" (the record of such an uploaded file), "orphan" (a file in nars/ no record names, moved to orphans/).`,
	}, []string{"kind"})
	mismatches.WithLabelValues("quarantined_path").Set(float64(r.QuarantinedPaths))
	mismatches.WithLabelValues("incomplete_closure").Set(float64(r.IncompletePaths))
	mismatches.WithLabelValues("dropped_nar_file").Set(float64(r.DroppedNarFiles))
	mismatches.WithLabelValues("orphan").Set(float64(r.Orphans))
	left := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "nixcache", Subsystem: "index", Name: "startup_leftover_uploads",
		Help: "Unfinished uploads of an earlier run (killed, or cut by a crash) removed from tmp/ at start.",
	})
	left.Set(float64(leftovers))
	dur := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "nixcache", Subsystem: "index", Name: "startup_check_duration_seconds",
		Help: "How long the startup check took.",
	})
	dur.Set(r.Duration.Seconds())
	for _, c := range []prometheus.Collector{mismatches, left, dur} {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("startup check metrics: %w", err)
		}
	}
	return nil
}

// Check runs the startup check on a data directory alone, as
// `nixcache-index check` does: the index must not be running (the
// catalogue cannot be opened twice). It repairs what it finds, as a start
// of the index would, and returns the report.
func Check(ctx context.Context, dataDir string, maxNarSize uint64, log *slog.Logger) (consistency.Report, error) {
	if _, err := os.Stat(filepath.Join(dataDir, "catalog.db")); err != nil {
		return consistency.Report{}, fmt.Errorf("no catalogue in %s: %w", dataDir, err)
	}
	cat, err := catalog.Open(filepath.Join(dataDir, "catalog.db"))
	if err != nil {
		return consistency.Report{}, fmt.Errorf("%w (is the index running? stop it first)", err)
	}
	defer cat.Close()
	nars, err := narstore.Open(dataDir, maxNarSize)
	if err != nil {
		return consistency.Report{}, err
	}
	artifacts, err := artifact.Open(dataDir)
	if err != nil {
		return consistency.Report{}, err
	}
	return startupCheck(ctx, log, cat, nars, nars.LeftoverUploads()+artifacts.LeftoverUploads())
}
