// Package consistency is the index's startup check: before it serves, the
// catalogue and the NAR files on disk must agree, whatever state a crash
// (SIGKILL, power loss) or a hand in the data directory left them in.
//
// An upload is written to tmp/, synced and renamed into nars/, and only
// then recorded in the catalogue; a path is published only once its file
// is recorded. So a crash can leave a file no record names (killed between
// the rename and the catalogue commit, or between a deletion's commit and
// the file's removal), never, short of a lost disk write, a record whose
// file is missing. The check repairs both:
//
//   - a published path whose NAR file is missing, is not a regular file or
//     has another size than recorded is quarantined: no longer served,
//     listed as quarantined, repaired by pushing it again;
//   - an uploaded NAR file's record (no published path) whose file is
//     missing or of another size is dropped: the uploader sends it again;
//   - a published path that refers to a path the catalogue does not
//     publish (a catalogue written before closures were kept in the
//     commit that changes them, or restored from a backup) is
//     quarantined, as the paths are that refer to a quarantined one:
//     nothing is served whose closure the cache cannot serve; a path
//     whose reference is served only from the host's store (pushed
//     before the cache copied such references at publish) is reported;
//   - a stored file that no record names is moved to orphans/ beside
//     nars/, not deleted: a catalogue restored from an older backup, or
//     the wrong one, must not cost the NAR files.
//
// It asks the backend for the size of each recorded file (a stat on the
// local disk, a HEAD with a bucket) and lists the stored files once,
// reading no content (re-hashing is AdminService.Verify's job). Files left
// in tmp/ are removed by narstore.Open, before. In a bucket, an orphan is
// reported but left in place.
package consistency

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"time"

	"github.com/nixcache/nixcache/nix/nixhash"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/catalog"
	"github.com/nixcache/nixcache/services/index/internal/narstore"
)

// Report is what one check found and did.
type Report struct {
	// Paths, NarFiles and Files count what was looked at: published
	// paths, uploaded NAR file records, stored files.
	Paths, NarFiles, Files int
	// QuarantinedPaths are published paths whose file was missing or of
	// another size, and the paths that refer to them; DroppedNarFiles the
	// records of uploaded files that were; Orphans the stored files no
	// record names, moved aside (left in place in a bucket).
	QuarantinedPaths, DroppedNarFiles, Orphans int
	// IncompletePaths are published paths with a reference the catalogue
	// does not publish, and the paths that refer to them, quarantined;
	// HostOnlyPaths those whose references are partly served only from
	// the host's store, left published.
	IncompletePaths, HostOnlyPaths int
	Duration                       time.Duration
}

// Mismatches is how many disagreements between the catalogue and the
// disk the check found (and repaired).
func (r Report) Mismatches() int {
	return r.QuarantinedPaths + r.DroppedNarFiles + r.Orphans + r.IncompletePaths
}

// Check compares the catalogue with the NAR files and repairs what
// disagrees, logging each repair at warn. Nothing else may use cat or
// nars meanwhile (the index runs it before it serves). An error means the
// check could not run (an unreadable directory, a damaged catalogue).
func Check(ctx context.Context, cat *catalog.Catalog, nars *narstore.Store, log *slog.Logger) (Report, error) {
	start := time.Now()
	var r Report
	if err := checkRecords(ctx, cat, nars, log, &r); err != nil {
		return r, err
	}
	if err := checkClosures(ctx, cat, log, &r); err != nil {
		return r, err
	}
	if err := moveOrphans(ctx, cat, nars, log, &r); err != nil {
		return r, err
	}
	r.Duration = time.Since(start)
	return r, nil
}

type badPath struct {
	hashPart, storePath, narHash, fileHash, problem string
}

// checkRecords stats the file of every NAR file record, and of every
// published path whose file that did not cover (one stat per file), then
// quarantines the paths whose file is bad and drops the bad records left.
func checkRecords(ctx context.Context, cat *catalog.Catalog, nars *narstore.Store, log *slog.Logger, r *Report) error {
	badFiles := map[string]string{} // nix32 file hash → problem
	err := cat.ForEachNarFile(func(fileHash string, nf *indexv1.NarFile) error {
		r.NarFiles++
		problem, err := nars.CheckFile(ctx, nf)
		if err != nil {
			return fmt.Errorf("NAR file %s: %w", nf.GetFileHash(), err)
		}
		if problem != "" {
			badFiles[fileHash] = problem
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("startup check: %w", err)
	}

	var bad []badPath
	err = cat.ForEachPublished(func(hashPart string, info *indexv1.PathInfo, rec *indexv1.NarFile) error {
		r.Paths++
		nf := info.GetFile()
		if nf == nil {
			return nil // not a pushed path's record: nothing on disk to check
		}
		problem := ""
		if rec != nil && rec.GetFileSize() == nf.GetFileSize() && rec.GetCompression() == nf.GetCompression() {
			// Checked above, as the file's record.
			fh, _ := nixhash.Parse(nf.GetFileHash())
			problem = badFiles[fh.NixBase32()]
		} else {
			var err error
			if problem, err = nars.CheckFile(ctx, nf); err != nil {
				return fmt.Errorf("%s: %w", info.GetStorePath(), err)
			}
		}
		if problem != "" {
			bad = append(bad, badPath{hashPart, info.GetStorePath(), info.GetNarHash(), nf.GetFileHash(), problem})
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("startup check: %w", err)
	}

	for _, b := range bad {
		moved, err := cat.Quarantine(b.hashPart, b.narHash)
		if err != nil {
			return fmt.Errorf("startup check: %w", err)
		}
		if len(moved) > 0 {
			r.QuarantinedPaths += len(moved)
			log.WarnContext(ctx, "startup check: quarantined a path whose NAR file does not match the catalogue",
				"store_path", b.storePath, "file_hash", b.fileHash, "problem", b.problem, "referrers_quarantined", moved[1:])
		}
	}
	// Quarantine took the records of those paths' files along: a bad
	// record left is one no published path uses.
	for _, fileHash := range slices.Sorted(maps.Keys(badFiles)) {
		dropped, err := cat.DropNarFile(fileHash)
		if err != nil {
			return fmt.Errorf("startup check: %w", err)
		}
		if dropped {
			r.DroppedNarFiles++
			log.WarnContext(ctx, "startup check: dropped the record of an uploaded NAR file that does not match it; it will be uploaded again",
				"file_hash", "sha256:"+fileHash, "problem", badFiles[fileHash])
		}
	}
	return nil
}

// checkClosures quarantines the published paths whose references are not
// all published (Quarantine takes their referrers along), and reports
// those that rely on the host's store.
func checkClosures(ctx context.Context, cat *catalog.Catalog, log *slog.Logger, r *Report) error {
	incomplete, err := cat.IncompleteClosures()
	if err != nil {
		return fmt.Errorf("startup check: %w", err)
	}
	for _, inc := range incomplete {
		if len(inc.Missing) == 0 {
			r.HostOnlyPaths++
			log.WarnContext(ctx, "startup check: a published path refers to paths served only from the host's store; deleting them there would break its closure",
				"store_path", inc.Info.GetStorePath(), "host_only", inc.HostOnly)
			continue
		}
		moved, err := cat.Quarantine(inc.HashPart, inc.Info.GetNarHash())
		if err != nil {
			return fmt.Errorf("startup check: %w", err)
		}
		if len(moved) > 0 {
			r.IncompletePaths += len(moved)
			log.WarnContext(ctx, "startup check: quarantined a published path whose references are not in the cache",
				"store_path", inc.Info.GetStorePath(), "missing", inc.Missing, "referrers_quarantined", moved[1:])
		}
	}
	return nil
}

// walkBatch is how many stored files are looked up in one catalogue
// transaction.
const walkBatch = 1000

func moveOrphans(ctx context.Context, cat *catalog.Catalog, nars *narstore.Store, log *slog.Logger, r *Report) error {
	// Files whose name no NAR file record gives; usually none.
	var unrecorded []narstore.StoredFile
	var batch []narstore.StoredFile
	flush := func() error {
		hashes := make([]string, len(batch))
		for i, f := range batch {
			hashes[i] = f.FileHash
		}
		recorded, err := cat.RecordedFiles(hashes)
		if err != nil {
			return err
		}
		for _, f := range batch {
			if comp, ok := recorded[f.FileHash]; !ok || comp != f.Compression {
				unrecorded = append(unrecorded, f)
			}
		}
		batch = batch[:0]
		return nil
	}
	err := nars.Walk(ctx, func(f narstore.StoredFile) error {
		r.Files++
		batch = append(batch, f)
		if len(batch) == walkBatch {
			return flush()
		}
		return nil
	})
	if err == nil {
		err = flush()
	}
	if err != nil {
		return fmt.Errorf("startup check: %w", err)
	}
	if len(unrecorded) == 0 {
		return nil
	}
	// A path may still name a file whose record went (two paths sharing
	// a file, one quarantined): such a file stays.
	wanted := map[string]bool{}
	for _, f := range unrecorded {
		wanted[f.FileHash] = true
	}
	used, err := cat.PathFiles(wanted)
	if err != nil {
		return fmt.Errorf("startup check: %w", err)
	}
	for _, f := range unrecorded {
		if comp, ok := used[f.FileHash]; ok && comp == f.Compression {
			continue
		}
		r.Orphans++
		name := "sha256:" + f.FileHash + " (" + f.Compression + ")"
		dst, err := nars.MoveAside(f)
		switch {
		case errors.Is(err, narstore.ErrCannotMoveAside):
			log.WarnContext(ctx, "startup check: a stored NAR file that no catalogue record names is left in place (remove it from the bucket by hand if unwanted)",
				"file", name, "size", f.Size)
		case err != nil:
			return fmt.Errorf("startup check: %w", err)
		default:
			log.WarnContext(ctx, "startup check: moved aside a file in nars/ that no catalogue record names",
				"file", name, "size", f.Size, "moved_to", dst)
		}
	}
	return nil
}
