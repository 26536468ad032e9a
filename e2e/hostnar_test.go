package e2e

import (
	"crypto/sha256"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nixcache/nixcache/nix/nixhash"
)

// The tests in this file check the compressed copies the index keeps of
// the host's NARs (nars/host/): made after a path's first download, named
// by its narinfo, served like pushed files, bounded, and gone with the
// path.

// withHostCopies serves the host's store with a gateway on the host that
// dumps host paths and sends stored files itself (-local-store-dir,
// -nar-dir), caching narinfos as deployed; extra are more index flags.
func withHostCopies(socket string, extra ...string) clusterOption {
	return func(c *cluster) {
		withLocalStore(socket)(c)
		withArgs("index", extra...)(c)
		withNarDir()(c)
		withGatewayDump()(c)
	}
}

// servedNarinfoField returns the value of key in the narinfo of storePath, ""
// when the narinfo lacks it or is not found.
func servedNarinfoField(t *testing.T, c *cluster, storePath, key string) string {
	t.Helper()
	r := httpDo(t, "GET", c.URL+"/"+hashPart(storePath)+".narinfo", "", nil, nil)
	if r.status != http.StatusOK {
		return ""
	}
	for _, line := range strings.Split(r.body, "\n") {
		if v, ok := strings.CutPrefix(line, key+": "); ok {
			return v
		}
	}
	return ""
}

// waitCompression polls the narinfo of storePath until it says want, and
// fails the test after within.
func waitCompression(t *testing.T, c *cluster, storePath, want string, within time.Duration) time.Duration {
	t.Helper()
	return eventually(t, within, "narinfo of "+storePath+" with Compression "+want, func() (bool, string) {
		got := servedNarinfoField(t, c, storePath, "Compression")
		return got == want, fmt.Sprintf("Compression %q, want %q", got, want)
	})
}

// waitCopyNamed polls the narinfo of storePath until it names a copy of
// compression comp (a URL other than the nix-serve one, old), and fails
// the test after within.
func waitCopyNamed(t *testing.T, c *cluster, storePath, comp, old string, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for deadline := start.Add(within); ; time.Sleep(50 * time.Millisecond) {
		got, url := servedNarinfoField(t, c, storePath, "Compression"), servedNarinfoField(t, c, storePath, "URL")
		if got == comp && url != "" && c.URL+"/"+url != old {
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			t.Fatalf("narinfo of %s: Compression %q, URL %q after %s, want a %s copy", storePath, got, url, within, comp)
		}
	}
}

// hostCopies lists the files under the index's nars/host/ (tmp/ apart),
// by relative path, with their sizes.
func hostCopies(t *testing.T, c *cluster) (map[string]int64, int64) {
	t.Helper()
	root := filepath.Join(c.dir, "index", "nars", "host")
	files := map[string]int64{}
	var total int64
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if d.Name() == "tmp" {
				return filepath.SkipDir
			}
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		files[filepath.ToSlash(rel)] = fi.Size()
		total += fi.Size()
		return nil
	})
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return files, total
}

// TestHostNarCopies: a host path's first download (by the real Nix, into a
// fresh store) makes a zstd copy; every narinfo of the closure then names
// it (through the change stream, to a caching gateway), with the hash and
// size of the bytes the gateway serves; a second substitution into another
// fresh store is verified by Nix again and served from the copies with
// sendfile (the index streams nothing); the old uncompressed URL still
// works. Deleted from the host, the paths are 404 within 5 s, their copies
// gone from disk and from the cache.
func TestHostNarCopies(t *testing.T) {
	checkHostNarCopies(t, "zstd")
}

// TestHostNarPlainCopies is TestHostNarCopies with -host-nar-compression
// none: the copies are the plain NARs (FileHash the NAR hash), named by
// the narinfo under their file hash instead of the nix-serve URL.
func TestHostNarPlainCopies(t *testing.T) {
	checkHostNarCopies(t, "none")
}

// checkHostNarCopies runs TestHostNarCopies with copies of compression
// comp.
func checkHostNarCopies(t *testing.T, comp string) {
	ext := map[string]string{"zstd": ".nar.zst", "none": ".nar"}[comp]
	c := newCluster(t, withHostCopies(startNixDaemon(t), "-host-nar-compression", comp))
	top, closure := buildClosure(t)
	local := pathInfos(t, nixConfig(), "--recursive", top)
	oldURL := map[string]string{}
	for _, p := range closure {
		waitStatus(t, c.URL+"/"+hashPart(p)+".narinfo", http.StatusOK, 5*time.Second)
		if got := servedNarinfoField(t, c, p, "Compression"); got != "none" {
			t.Fatalf("narinfo of %s before any download: Compression %q, want none", p, got)
		}
		oldURL[p] = narURL(t, c, p)
	}
	if files, _ := hostCopies(t, c); len(files) != 0 {
		t.Fatalf("copies before any download: %v", files)
	}

	substituteAndCheck(t, c, top, closure, local)
	for _, p := range closure {
		d := waitCopyNamed(t, c, p, comp, oldURL[p], 30*time.Second)
		t.Logf("%s: narinfo names its %s copy %s after the first download", filepath.Base(p), comp, d.Round(time.Millisecond))
	}
	files, total := hostCopies(t, c)
	if len(files) != len(closure) {
		t.Fatalf("%d copies on disk, want %d: %v", len(files), len(closure), files)
	}
	for _, p := range closure {
		url := narURL(t, c, p)
		fh, err := nixhash.Parse(servedNarinfoField(t, c, p, "FileHash"))
		if err != nil {
			t.Fatalf("narinfo of %s: FileHash: %v", p, err)
		}
		if want := c.URL + "/nar/" + fh.NixBase32() + ext; url != want {
			t.Fatalf("narinfo of %s names %s, want %s", p, url, want)
		}
		if comp == "none" && servedNarinfoField(t, c, p, "FileHash") != servedNarinfoField(t, c, p, "NarHash") {
			t.Errorf("narinfo of %s: plain copy's FileHash %s, NarHash %s", p, servedNarinfoField(t, c, p, "FileHash"), servedNarinfoField(t, c, p, "NarHash"))
		}
		r := httpDo(t, "GET", url, "", nil, nil)
		if r.status != http.StatusOK {
			t.Fatalf("GET %s: %d", url, r.status)
		}
		sum := sha256.Sum256([]byte(r.body))
		served := nixhash.Hash{Algo: nixhash.SHA256, Digest: sum[:]}
		if !fh.Equal(served) {
			t.Errorf("%s: FileHash %s, served bytes hash %s", p, fh, served)
		}
		if size := servedNarinfoField(t, c, p, "FileSize"); size != fmt.Sprint(len(r.body)) {
			t.Errorf("%s: FileSize %s, %d bytes served", p, size, len(r.body))
		}
		rel := fh.NixBase32()[:2] + "/" + fh.NixBase32() + ext
		if files[rel] != int64(len(r.body)) {
			t.Errorf("%s: copy %s on disk is %d bytes, %d served", p, rel, files[rel], len(r.body))
		}
		// A client that read the narinfo before the copy existed.
		if o := httpDo(t, "GET", oldURL[p], "", nil, nil); o.status != http.StatusOK || uint64(len(o.body)) != local[p].NarSize {
			t.Errorf("old URL %s: %d, %d bytes, want 200, %d", oldURL[p], o.status, len(o.body), local[p].NarSize)
		}
	}
	t.Logf("copies: %d files, %d bytes, of %d NAR bytes", len(files), total, local[closure[0]].NarSize+local[closure[1]].NarSize+local[closure[2]].NarSize)

	index := "http://" + c.indexMetrics + "/metrics"
	getNar := `grpc_server_handled_total{grpc_code="OK",grpc_method="GetNar",grpc_service="nixcache.index.v1.IndexService",grpc_type="server_stream"}`
	before := metric(t, index, getNar)
	substituteAndCheck(t, c, top, closure, local)
	if n := metric(t, index, getNar) - before; n != 0 {
		t.Errorf("the second substitution streamed %v NARs from the index; the gateway should have sent the copies", n)
	}

	zst := narURL(t, c, top)
	mustNix(t, nixConfig(), "nix-store", "--delete", closure[0], closure[1], closure[2])
	for _, p := range closure {
		d := waitStatus(t, c.URL+"/"+hashPart(p)+".narinfo", http.StatusNotFound, 5*time.Second)
		t.Logf("%s 404 %s after its deletion", filepath.Base(p), d.Round(time.Millisecond))
	}
	if status := httpStatus(t, "GET", zst, "", nil); status != http.StatusNotFound {
		t.Errorf("copy %s of a deleted path: %d, want 404", zst, status)
	}
	if files, _ := hostCopies(t, c); len(files) != 0 {
		t.Errorf("copies of deleted paths still on disk: %v", files)
	}
}

// buildLeaves builds n closures whose leaves hold size random bytes and
// returns the leaves.
func buildLeaves(t *testing.T, n, size int) []string {
	t.Helper()
	var leaves []string
	for i := range n {
		seed := fmt.Sprintf("hostnar-%d-%s", i, randomHex(t, 4))
		top := strings.TrimSpace(mustNix(t, nixConfig(), "nix-build", "testdata/closure.nix",
			"--argstr", "seed", seed, "--arg", "randomBytes", fmt.Sprint(size), "--no-out-link"))
		for _, p := range strings.Fields(mustNix(t, nixConfig(), "nix-store", "--query", "--requisites", top)) {
			if strings.Contains(p, "-leaf-") {
				leaves = append(leaves, p)
			}
		}
		t.Cleanup(func() { nixRun(t, nixConfig(), "nix-store", "--delete", top) })
	}
	if len(leaves) != n {
		t.Fatalf("built %d leaves, want %d", len(leaves), n)
	}
	return leaves
}

// TestHostNarEviction: under a budget that holds one copy of the two, the
// second path's copy evicts the first's: its narinfo names the
// uncompressed NAR again (and that is served), its file is gone from disk,
// and the copies never exceed the budget. A client holding the old
// narinfo still gets the evicted copy's bytes (made again as they
// stream), and that download brings the copy back, evicting the other.
func TestHostNarEviction(t *testing.T) {
	const budget = 500000
	c := newCluster(t, withHostCopies(startNixDaemon(t), "-host-nar-max-size", fmt.Sprint(budget)))
	leaves := buildLeaves(t, 2, 300000)
	a, b := leaves[0], leaves[1]

	if r := httpDo(t, "GET", narURL(t, c, a), "", nil, nil); r.status != http.StatusOK {
		t.Fatalf("first download of %s: %d", a, r.status)
	}
	waitCompression(t, c, a, "zstd", 30*time.Second)
	aCopy := narURL(t, c, a)
	aFileHash := servedNarinfoField(t, c, a, "FileHash")
	if _, total := hostCopies(t, c); total == 0 || total > budget {
		t.Fatalf("copies hold %d bytes after the first, want 1 to %d", total, budget)
	}

	if r := httpDo(t, "GET", narURL(t, c, b), "", nil, nil); r.status != http.StatusOK {
		t.Fatalf("first download of %s: %d", b, r.status)
	}
	waitCompression(t, c, b, "zstd", 30*time.Second)
	d := waitCompression(t, c, a, "none", 5*time.Second)
	t.Logf("the evicted path's narinfo names its uncompressed NAR %s after", d.Round(time.Millisecond))
	files, total := hostCopies(t, c)
	if len(files) != 1 || total > budget {
		t.Errorf("copies after the eviction: %v (%d bytes), want one within %d bytes", files, total, budget)
	}
	if r := httpDo(t, "GET", narURL(t, c, a), "", nil, nil); r.status != http.StatusOK || !strings.Contains(narURL(t, c, a), "-") {
		t.Errorf("the evicted path's NAR, uncompressed: %d", r.status)
	}

	r := httpDo(t, "GET", aCopy, "", nil, nil)
	sum := sha256.Sum256([]byte(r.body))
	want, _ := nixhash.Parse(aFileHash)
	if r.status != http.StatusOK || !want.Equal(nixhash.Hash{Algo: nixhash.SHA256, Digest: sum[:]}) {
		t.Fatalf("evicted copy %s: %d, %d bytes; want 200 and the bytes of FileHash %s", aCopy, r.status, len(r.body), aFileHash)
	}
	waitCompression(t, c, a, "zstd", 30*time.Second)
	waitCompression(t, c, b, "none", 5*time.Second)
	if got := servedNarinfoField(t, c, a, "FileHash"); got != aFileHash {
		t.Errorf("copy made again: FileHash %s, was %s", got, aFileHash)
	}
	if files, total := hostCopies(t, c); len(files) != 1 || total > budget {
		t.Errorf("copies after the evicted one came back: %v (%d bytes), want one within %d bytes", files, total, budget)
	}
}

// TestHostNarKilledMidWrite: an index killed (SIGKILL) while it writes a
// copy leaves nothing served: the path's narinfo still names the
// uncompressed NAR; at the next start the unfinished file is removed, and
// so is a file in place that no record names (a crash between the rename
// and the record). The path is then copied again on its next download.
func TestHostNarKilledMidWrite(t *testing.T) {
	// zstd level 19 on 64 MiB of random bytes takes seconds: time to
	// catch the copy half written.
	c := newCluster(t, withHostCopies(startNixDaemon(t), "-host-nar-level", "19"))
	leaf := buildLeaves(t, 1, 64<<20)[0]
	tmp := filepath.Join(c.dir, "index", "nars", "host", "tmp")

	if r := httpDo(t, "GET", narURL(t, c, leaf), "", nil, nil); r.status != http.StatusOK {
		t.Fatalf("first download of %s: %d", leaf, r.status)
	}
	var partial string
	for deadline := time.Now().Add(30 * time.Second); partial == ""; time.Sleep(5 * time.Millisecond) {
		entries, _ := os.ReadDir(tmp)
		for _, e := range entries {
			if fi, err := e.Info(); err == nil && fi.Size() > 0 {
				partial = e.Name()
			}
		}
		if partial == "" && time.Now().After(deadline) {
			t.Fatalf("no copy being written in %s after 30s", tmp)
		}
	}
	c.kill("index")
	if files, _ := hostCopies(t, c); len(files) != 0 {
		t.Fatalf("a copy in place although the index was killed while writing it: %v", files)
	}
	// As if the index had died between the rename and the record.
	stray := filepath.Join(c.dir, "index", "nars", "host", "0a", "0a"+strings.Repeat("1", 50)+".nar.zst")
	if err := os.MkdirAll(filepath.Dir(stray), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(stray, []byte("not a verified copy"), 0o640); err != nil {
		t.Fatal(err)
	}

	c.start("index")
	if _, err := os.Stat(filepath.Join(tmp, partial)); !os.IsNotExist(err) {
		t.Errorf("unfinished copy %s after the restart: %v, want it removed", partial, err)
	}
	if _, err := os.Stat(stray); !os.IsNotExist(err) {
		t.Errorf("unrecorded copy %s after the restart: %v, want it removed", stray, err)
	}
	if got := servedNarinfoField(t, c, leaf, "Compression"); got != "none" {
		t.Errorf("narinfo after the restart: Compression %q, want none", got)
	}
	if status := httpStatus(t, "GET", c.URL+"/nar/"+filepath.Base(stray), "", nil); status != http.StatusNotFound {
		t.Errorf("GET of the unrecorded copy: %d, want 404", status)
	}
}
