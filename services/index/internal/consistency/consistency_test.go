package consistency_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/nixcache/nixcache/nix/compression"
	"github.com/nixcache/nixcache/nix/nixhash"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/catalog"
	"github.com/nixcache/nixcache/services/index/internal/consistency"
	"github.com/nixcache/nixcache/services/index/internal/fault"
	"github.com/nixcache/nixcache/services/index/internal/narstore"
	"github.com/nixcache/nixcache/services/index/internal/nartest"
)

// index is a data directory with its catalogue and NAR store open, as the
// index has them when the check runs.
type index struct {
	t    *testing.T
	dir  string
	cat  *catalog.Catalog
	nars *narstore.Store
	log  bytes.Buffer
}

func newIndex(t *testing.T) *index {
	x := &index{t: t, dir: t.TempDir()}
	x.open()
	t.Cleanup(func() { x.cat.Close() })
	return x
}

func (x *index) open() {
	x.t.Helper()
	var err error
	if x.cat, err = catalog.Open(filepath.Join(x.dir, "catalog.db")); err != nil {
		x.t.Fatal(err)
	}
	if x.nars, err = narstore.Open(x.dir, 1<<20); err != nil {
		x.t.Fatal(err)
	}
}

// restart closes and reopens the catalogue and the store, as a new
// process of the index would.
func (x *index) restart() {
	x.t.Helper()
	if err := x.cat.Close(); err != nil {
		x.t.Fatal(err)
	}
	x.open()
}

func (x *index) check() consistency.Report {
	x.t.Helper()
	x.log.Reset()
	r, err := consistency.Check(context.Background(), x.cat, x.nars, slog.New(slog.NewTextHandler(&x.log, nil)))
	if err != nil {
		x.t.Fatalf("Check: %v", err)
	}
	return r
}

// upload stores a NAR file as PutNar does: the file, then (with record)
// its catalogue record. Without record it is what a kill between the two
// leaves.
func (x *index) upload(seed uint64, comp string, record bool) *indexv1.NarFile {
	x.t.Helper()
	data := nartest.Small(x.t, seed)
	if comp != compression.None {
		data = nartest.Compress(x.t, comp, data)
	}
	nf, err := x.nars.Ingest(context.Background(), bytes.NewReader(data), narstore.Expect{})
	if err != nil {
		x.t.Fatal(err)
	}
	if record {
		if _, err := x.cat.AddNarFile(nix32(x.t, nf.GetFileHash()), nf); err != nil {
			x.t.Fatal(err)
		}
	}
	return nf
}

// publish records a path using nf, as PutPathInfo does once checked and
// signed.
func (x *index) publish(hashPart string, nf *indexv1.NarFile) *indexv1.PathInfo {
	x.t.Helper()
	info := &indexv1.PathInfo{
		StorePath:  "/nix/store/" + hashPart + "-p",
		NarHash:    nf.GetNarHash(),
		NarSize:    nf.GetNarSize(),
		File:       nf,
		Signatures: []string{"test-1:sig"},
	}
	if _, err := x.cat.UpdatePathInfo(hashPart, func(*indexv1.PathInfo) (*indexv1.PathInfo, error) { return info, nil }); err != nil {
		x.t.Fatal(err)
	}
	return info
}

func (x *index) filePath(nf *indexv1.NarFile) string {
	x.t.Helper()
	p, err := x.nars.Path(nf)
	if err != nil {
		x.t.Fatal(err)
	}
	return p
}

// served tells whether the path is published (not quarantined).
func (x *index) served(hashPart string) bool {
	x.t.Helper()
	_, err := x.cat.PathInfo(hashPart)
	if err != nil && !errors.Is(err, fault.ErrNotFound) {
		x.t.Fatal(err)
	}
	return err == nil
}

func nix32(t *testing.T, fileHash string) string {
	t.Helper()
	h, err := nixhash.Parse(fileHash)
	if err != nil {
		t.Fatal(err)
	}
	return h.NixBase32()
}

func hashPart(i int) string { return fmt.Sprintf("%032d", i) }

// counts is the part of a report the tests compare.
type counts struct{ paths, narFiles, files, quarantined, dropped, orphans int }

func countsOf(r consistency.Report) counts {
	return counts{r.Paths, r.NarFiles, r.Files, r.QuarantinedPaths, r.DroppedNarFiles, r.Orphans}
}

// TestCheckClean: a directory written as the index writes it has no
// mismatch, before and after a restart, and nothing is touched.
func TestCheckClean(t *testing.T) {
	x := newIndex(t)
	for i, comp := range []string{compression.None, compression.XZ, compression.Zstd} {
		x.publish(hashPart(i), x.upload(uint64(i), comp, true))
	}
	x.upload(10, compression.XZ, true) // uploaded, narinfo not sent yet
	want := counts{paths: 3, narFiles: 4, files: 4}
	for range 2 {
		if got := countsOf(x.check()); got != want {
			t.Errorf("report %+v, want %+v\n%s", got, want, x.log.String())
		}
		if r := x.check(); r.Mismatches() != 0 {
			t.Errorf("Mismatches = %d, want 0", r.Mismatches())
		}
		x.restart()
	}
	if _, err := os.Stat(filepath.Join(x.dir, "orphans")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("orphans/ exists after clean checks: %v", err)
	}
}

// TestCheckRepairs builds each mismatch a crash or a hand can leave and
// checks the repair; paths that were fine stay served.
func TestCheckRepairs(t *testing.T) {
	tests := []struct {
		name string
		// damage breaks a fresh index holding one good published path
		// (hashPart(0)) and returns the hash part of a published path it
		// broke, if any.
		damage  func(x *index) (broken string)
		want    counts
		wantLog string
	}{
		{
			name: "published path, file missing",
			damage: func(x *index) string {
				nf := x.upload(1, compression.XZ, true)
				x.publish(hashPart(1), nf)
				if err := os.Remove(x.filePath(nf)); err != nil {
					x.t.Fatal(err)
				}
				return hashPart(1)
			},
			want:    counts{paths: 2, narFiles: 2, files: 1, quarantined: 1},
			wantLog: "the NAR file is missing",
		},
		{
			name: "published path, file cut short",
			damage: func(x *index) string {
				nf := x.upload(1, compression.None, true)
				x.publish(hashPart(1), nf)
				if err := os.Truncate(x.filePath(nf), int64(nf.GetFileSize())/2); err != nil {
					x.t.Fatal(err)
				}
				return hashPart(1)
			},
			// The short file stays, named by the quarantined record:
			// DeletePath removes it, a new push replaces it.
			want:    counts{paths: 2, narFiles: 2, files: 2, quarantined: 1},
			wantLog: "bytes, not",
		},
		{
			name: "published path, a directory where its file should be",
			damage: func(x *index) string {
				nf := x.upload(1, compression.Zstd, true)
				x.publish(hashPart(1), nf)
				p := x.filePath(nf)
				if err := os.Remove(p); err != nil {
					x.t.Fatal(err)
				}
				if err := os.Mkdir(p, 0o755); err != nil {
					x.t.Fatal(err)
				}
				return hashPart(1)
			},
			want:    counts{paths: 2, narFiles: 2, files: 1, quarantined: 1},
			wantLog: "bytes, not",
		},
		{
			name: "uploaded file, not published, missing",
			damage: func(x *index) string {
				nf := x.upload(1, compression.XZ, true)
				if err := os.Remove(x.filePath(nf)); err != nil {
					x.t.Fatal(err)
				}
				return ""
			},
			want:    counts{paths: 1, narFiles: 2, files: 1, dropped: 1},
			wantLog: "dropped the record",
		},
		{
			name: "uploaded file, not published, cut short",
			damage: func(x *index) string {
				nf := x.upload(1, compression.XZ, true)
				if err := os.Truncate(x.filePath(nf), 10); err != nil {
					x.t.Fatal(err)
				}
				return ""
			},
			// Its record dropped, the short file is an orphan.
			want:    counts{paths: 1, narFiles: 2, files: 2, dropped: 1, orphans: 1},
			wantLog: "moved aside",
		},
		{
			name: "killed between the rename and the catalogue commit",
			damage: func(x *index) string {
				x.upload(1, compression.Zstd, false)
				return ""
			},
			want:    counts{paths: 1, narFiles: 1, files: 2, orphans: 1},
			wantLog: "no catalogue record names",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			x := newIndex(t)
			good := x.publish(hashPart(0), x.upload(0, compression.XZ, true))
			broken := tt.damage(x)
			x.restart()

			r := x.check()
			if got := countsOf(r); got != tt.want {
				t.Errorf("report %+v, want %+v\n%s", got, tt.want, x.log.String())
			}
			if r.Mismatches() == 0 {
				t.Error("Mismatches = 0 for a damaged directory")
			}
			if !strings.Contains(x.log.String(), "level=WARN") || !strings.Contains(x.log.String(), tt.wantLog) {
				t.Errorf("log lacks a warning with %q:\n%s", tt.wantLog, x.log.String())
			}
			if broken != "" {
				if x.served(broken) {
					t.Errorf("%s is still served", broken)
				}
				e, err := x.cat.Lookup(broken)
				if err != nil || !e.Quarantined {
					t.Errorf("%s: Lookup = %+v, %v; want quarantined", broken, e, err)
				}
				if !strings.Contains(x.log.String(), "/nix/store/"+broken) {
					t.Errorf("log does not name %s:\n%s", broken, x.log.String())
				}
			}
			if !x.served(hashPart(0)) {
				t.Error("the good path is no longer served")
			}
			if problem, err := x.nars.CheckFile(context.Background(), good.GetFile()); problem != "" || err != nil {
				t.Errorf("the good path's file: %q, %v", problem, err)
			}
			// Every NAR record names a file that is there, and every
			// file is named by a record.
			if err := x.cat.ForEachNarFile(func(fh string, nf *indexv1.NarFile) error {
				if problem, err := x.nars.CheckFile(context.Background(), nf); problem != "" || err != nil {
					t.Errorf("after the check, record %s: %q, %v", fh, problem, err)
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			if tt.want.orphans > 0 {
				moved, err := os.ReadDir(filepath.Join(x.dir, "orphans"))
				if err != nil || len(moved) != tt.want.orphans {
					t.Errorf("orphans/ holds %d entries (%v), want %d", len(moved), err, tt.want.orphans)
				}
			}

			// Repaired: the next start finds nothing.
			x.restart()
			if r := x.check(); r.Mismatches() != 0 {
				t.Errorf("second check: %+v, want no mismatch\n%s", countsOf(r), x.log.String())
			}
		})
	}
}

// TestCheckQuarantinedPathPushedAgain: the usual repair of a quarantined
// path, pushing it again, leaves a directory the check finds clean.
func TestCheckQuarantinedPathPushedAgain(t *testing.T) {
	x := newIndex(t)
	nf := x.upload(1, compression.XZ, true)
	x.publish(hashPart(1), nf)
	if err := os.Truncate(x.filePath(nf), 3); err != nil {
		t.Fatal(err)
	}
	x.restart()
	if r := x.check(); r.QuarantinedPaths != 1 {
		t.Fatalf("QuarantinedPaths = %d, want 1\n%s", r.QuarantinedPaths, x.log.String())
	}
	x.publish(hashPart(1), x.upload(1, compression.XZ, true))
	if !x.served(hashPart(1)) {
		t.Fatal("pushed again, the path is not served")
	}
	x.restart()
	if r := x.check(); r.Mismatches() != 0 {
		t.Errorf("after the new push: %+v, want no mismatch\n%s", countsOf(r), x.log.String())
	}
}

// TestCheckKeepsFileOfPath: a file whose NAR record is gone but that a
// path still names (two paths sharing one file, one of them quarantined
// by Verify) is not an orphan.
func TestCheckKeepsFileOfPath(t *testing.T) {
	x := newIndex(t)
	nf := x.upload(1, compression.XZ, true)
	x.publish(hashPart(1), nf)
	x.publish(hashPart(2), nf)
	if _, err := x.cat.Quarantine(hashPart(1), nf.GetNarHash()); err != nil {
		t.Fatal(err)
	}
	if _, err := x.cat.DropNarFile(nix32(t, nf.GetFileHash())); err != nil {
		t.Fatal(err)
	}
	x.restart()
	if r := x.check(); countsOf(r) != (counts{paths: 1, files: 1}) {
		t.Errorf("report %+v, want one path, one file, nothing repaired\n%s", countsOf(r), x.log.String())
	}
	if problem, err := x.nars.CheckFile(context.Background(), nf); problem != "" || err != nil {
		t.Errorf("the shared file: %q, %v", problem, err)
	}
	if !x.served(hashPart(2)) {
		t.Error("the path using the file is no longer served")
	}
}

// TestCheckIncompleteClosure: a published path whose reference the
// catalogue lost (a record deleted by hand, a catalogue restored from the
// wrong backup) is quarantined with what refers to it; its files stay.
func TestCheckIncompleteClosure(t *testing.T) {
	x := newIndex(t)
	dep, mid, top, other := hashPart(1), hashPart(2), hashPart(3), hashPart(4)
	x.publish(dep, x.upload(1, compression.None, true))
	publishRefs := func(h string, seed uint64, refs ...string) {
		nf := x.upload(seed, compression.XZ, true)
		info := &indexv1.PathInfo{StorePath: "/nix/store/" + h + "-p", NarHash: nf.GetNarHash(), NarSize: nf.GetNarSize(),
			File: nf, References: refs, Signatures: []string{"test-1:sig"}}
		if _, err := x.cat.UpdatePathInfo(h, func(*indexv1.PathInfo) (*indexv1.PathInfo, error) { return info, nil }); err != nil {
			t.Fatal(err)
		}
	}
	publishRefs(mid, 2, dep+"-p")
	publishRefs(top, 3, mid+"-p", dep+"-p")
	publishRefs(other, 4)
	if r := x.check(); r.Mismatches() != 0 || r.IncompletePaths != 0 {
		t.Fatalf("complete closures: %+v\n%s", r, x.log.String())
	}

	// The dependency's record goes, behind the index's back.
	if err := x.cat.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(filepath.Join(x.dir, "catalog.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error { return tx.Bucket([]byte("paths")).Delete([]byte(dep)) }); err != nil {
		t.Fatal(err)
	}
	db.Close()
	x.open()

	r := x.check()
	if r.IncompletePaths != 2 || r.Mismatches() != 2 {
		t.Fatalf("IncompletePaths %d, Mismatches %d; want 2 (mid and top)\n%s", r.IncompletePaths, r.Mismatches(), x.log.String())
	}
	for h, want := range map[string]bool{mid: false, top: false, other: true} {
		if got := x.served(h); got != want {
			t.Errorf("%s served: %v, want %v", h, got, want)
		}
	}
	for _, h := range []string{mid, top} {
		if e, err := x.cat.Lookup(h); err != nil || !e.Quarantined {
			t.Errorf("%s: %+v, %v; want it quarantined, kept", h, e, err)
		}
	}
	if !strings.Contains(x.log.String(), "references are not in the cache") {
		t.Errorf("log says nothing of the missing reference:\n%s", x.log.String())
	}
	if r := x.check(); r.Mismatches() != 0 {
		t.Errorf("second check: %+v", r)
	}
}
