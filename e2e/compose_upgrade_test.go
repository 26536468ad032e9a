package e2e

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// previousRelease is the commit whose compose deployment
// TestComposeUpgrade upgrades from: main before the docker compose work of
// issue 20. Move it forward when a release is made.
const previousRelease = "75fa6a69da605faefa6ffe749476194a082ac958"

// TestComposeUpgrade deploys the previous release with its own
// docker-compose.yml and binaries (built from previousRelease here), pushes
// and pins, then upgrades to the code under test as docs/deploy.md tells:
// every path is still served with valid signatures by the same key, the
// push token still pushes, the pin is kept. Then a backup of the running
// cache (`nixcache-index backup` and the NAR files) is restored into a new
// volume and serves what it held; the index given a catalogue of a newer
// schema than it knows (as after a downgrade) refuses to start, saying
// so, and leaves it as it was; and the previous release, started again
// on the upgraded data (the same schema), serves it.
func TestComposeUpgrade(t *testing.T) {
	old := buildPreviousRelease(t)
	// After the project's own clean-up (clean-ups run last first): the
	// images of whichever release was not the last one up.
	var tags []string
	t.Cleanup(func() {
		for _, tag := range tags {
			for _, s := range services {
				exec.Command("docker", "image", "rm", "-f", "nixcache-"+s+":"+tag).Run()
			}
		}
	})
	p := newComposeProjectAt(t, old, filepath.Join(old, "bin"))
	oldTag := p.name
	newTag := p.name + "-new"
	tags = append(tags, oldTag, newTag)
	p.up()
	key := p.publicKey()
	push := nixConfig("netrc-file = " + p.netrc())
	var tops []string
	pushOne := func() string {
		top, _ := buildClosure(p.t)
		p.mustNix(push, "nix", "copy", "--to", p.URL+"?compression=zstd", top)
		return top
	}

	// Kept across the steps: each step's own TempDir goes with it.
	backup := filepath.Join(t.TempDir(), "backup")
	var afterBackup string
	steps := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"push and pin on the previous release", func(t *testing.T) {
			tops = append(tops, pushOne())
			p.admin("POST", "/api/v1/pins", fmt.Sprintf(`{"path": %q}`, tops[0]), http.StatusOK)
			p.assertPinned(tops[0])
			p.assertServed(key, tops...)
		}},
		{"upgrade", func(t *testing.T) {
			root, err := filepath.Abs("..")
			if err != nil {
				t.Fatal(err)
			}
			p.switchTo(root, binDir, newTag)
			p.compose("build")
			p.up()
			for _, s := range services {
				if img := strings.TrimSpace(p.docker("inspect", "-f", "{{.Config.Image}}", p.container(s))); img != "nixcache-"+s+":"+newTag {
					t.Fatalf("%s runs %s after the upgrade, want nixcache-%s:%s", s, img, s, newTag)
				}
			}
			if got := p.publicKey(); got != key {
				t.Fatalf("after the upgrade the key is %q, before %q", got, key)
			}
			p.assertServed(key, tops...)
			p.assertPinned(tops[0])
			// The same token pushes.
			tops = append(tops, pushOne())
			p.assertServed(key, tops...)
		}},
		{"backup while running then restore", func(t *testing.T) {
			p.backup(backup)
			afterBackup = pushOne()
			p.restore(backup)
			p.assertServed(key, tops...)
			p.assertPinned(tops[0])
			p.waitStatus("GET", p.URL+"/"+hashPart(afterBackup)+".narinfo", http.StatusNotFound, time.Minute)
		}},
		{"newer catalogue schema refused", func(t *testing.T) {
			p.assertRefusesNewerSchema(backup)
			p.assertServed(key, tops...)
		}},
		{"previous release on the upgraded data", func(t *testing.T) {
			p.switchTo(old, filepath.Join(old, "bin"), oldTag)
			p.up()
			p.assertServed(key, tops...)
			p.assertPinned(tops[0])
		}},
	}
	for _, s := range steps {
		start := time.Now()
		ok := t.Run(s.name, func(t *testing.T) {
			p.t = t
			s.run(t)
		})
		p.t = t
		t.Logf("%s: %v", s.name, time.Since(start).Round(time.Millisecond))
		if !ok {
			return
		}
	}
}

// buildPreviousRelease extracts previousRelease from the repository (git
// archive: no checkout, no worktree) and builds its binaries with its own
// Makefile; it returns the tree.
func buildPreviousRelease(t *testing.T) string {
	t.Helper()
	composeCommand(t) // skips or fails before the build when there is no Docker
	start := time.Now()
	dir := filepath.Join(t.TempDir(), "previous")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	extract := exec.Command("bash", "-o", "pipefail", "-c", `git -C .. archive --format=tar "$1" | tar -x -C "$2"`, "-", previousRelease, dir)
	if out, err := extract.CombinedOutput(); err != nil {
		t.Fatalf("git archive %s (the test needs the repository's history): %v\n%s", previousRelease, err, out)
	}
	build := exec.Command("make", "-C", dir, "build")
	build.Env = append(os.Environ(), "GOFLAGS=-buildvcs=false")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("make build of %s: %v\n%s", previousRelease, err, out)
	}
	t.Logf("previous release %.12s built: %v", previousRelease, time.Since(start).Round(time.Millisecond))
	return dir
}

// switchTo points the project at the compose files of the tree root and
// the binaries in bin, its images tagged tag: what `git pull && make build
// && docker compose up -d --build` does to a deployment (same project
// name, so the same volumes). Files added with withFile are dropped.
func (p *composeProject) switchTo(root, bin, tag string) {
	p.t.Helper()
	envFile := p.args[slices.Index(p.args, "--env-file")+1]
	p.root = root
	p.args = []string{"-p", p.name, "-f", filepath.Join(root, "docker-compose.yml")}
	if override := p.buildContextOverride(p.t.TempDir(), bin); override != "" {
		p.args = append(p.args, "-f", override)
	}
	p.args = append(p.args, "--env-file", envFile)
	p.env = slices.DeleteFunc(p.env, func(kv string) bool { return strings.HasPrefix(kv, "NIXCACHE_IMAGE_TAG=") })
	p.env = append(p.env, "NIXCACHE_IMAGE_TAG="+tag)
}

// admin calls the gateway's JSON admin API with the admin token and
// returns the body; another status than want fails the test.
func (p *composeProject) admin(method, path, body string, want int) string {
	p.t.Helper()
	req, err := http.NewRequest(method, p.URL+path, strings.NewReader(body))
	if err != nil {
		p.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+p.pushToken())
	resp, err := (&http.Client{Timeout: time.Minute}).Do(req)
	if err != nil {
		p.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		p.t.Fatalf("%s %s: %d %s, want %d", method, path, resp.StatusCode, b, want)
	}
	return string(b)
}

// assertPinned: the admin API lists a pin of path.
func (p *composeProject) assertPinned(path string) {
	p.t.Helper()
	if pins := p.admin("GET", "/api/v1/pins", "", http.StatusOK); !strings.Contains(pins, path) {
		p.t.Errorf("the pins do not name %s: %s", path, pins)
	}
}

// backup backs the running cache up as docs/deploy.md tells: the catalogue
// with `nixcache-index backup` through compose exec, then the NAR files
// with docker cp, into a new directory dir.
func (p *composeProject) backup(dir string) {
	t := p.t
	t.Helper()
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	catalog := p.compose("exec", "-T", "index", "/nixcache-index", "backup")
	if err := os.WriteFile(filepath.Join(dir, "catalog.db"), []byte(catalog), 0o600); err != nil {
		t.Fatal(err)
	}
	p.docker("cp", p.container("index")+":/var/lib/nixcache/index/nars", dir)
	t.Logf("backup: catalogue %d bytes, %d NAR files", len(catalog), countFiles(t, filepath.Join(dir, "nars")))
}

// restore puts the backup dir into a new index volume, as docs/deploy.md
// tells, and starts the cache on it.
func (p *composeProject) restore(dir string) {
	t := p.t
	t.Helper()
	p.compose("rm", "-f", "-s", "gateway", "index")
	p.docker("volume", "rm", p.name+"_index-data")
	p.compose("up", "--no-start", "index")
	data := p.indexVolume()
	if out, err := exec.Command("cp", "-a", dir+"/.", data+"/").CombinedOutput(); err != nil {
		t.Fatalf("cp: %v\n%s", err, out)
	}
	if out, err := exec.Command("chown", "-R", "65532:65532", data).CombinedOutput(); err != nil {
		t.Fatalf("chown: %v\n%s", err, out)
	}
	p.up()
}

// indexVolume is the directory of the index's volume on this host.
func (p *composeProject) indexVolume() string {
	p.t.Helper()
	return strings.TrimSpace(p.docker("volume", "inspect", "-f", "{{.Mountpoint}}", p.name+"_index-data"))
}

// assertRefusesNewerSchema stops the index, gives it the catalogue of
// backup with a schema one above what it knows, and starts it: it must
// stop with a message that says so, and leave the file as it was; given
// its catalogue back, it serves again.
func (p *composeProject) assertRefusesNewerSchema(backup string) {
	t := p.t
	t.Helper()
	id := p.container("index")
	p.compose("stop", "gateway", "index")
	catalog := filepath.Join(p.indexVolume(), "catalog.db")
	held := filepath.Join(t.TempDir(), "held.db")
	if out, err := exec.Command("cp", "-a", catalog, held).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v\n%s", err, out)
	}
	if out, err := exec.Command("cp", filepath.Join(backup, "catalog.db"), catalog).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v\n%s", err, out)
	}
	schema := bumpSchema(t, catalog)
	want, err := os.ReadFile(catalog)
	if err != nil {
		t.Fatal(err)
	}

	since := time.Now().Add(-time.Second).UTC().Format(time.RFC3339)
	p.compose("start", "index")
	message := fmt.Sprintf("catalog schema %d is newer than this index's (%d)", schema, schema-1)
	p.poll(time.Minute, "the index to refuse the catalogue", func() string {
		logs, _ := exec.Command("docker", "logs", "--since", since, id).CombinedOutput()
		if !bytes.Contains(logs, []byte(message)) || !bytes.Contains(logs, []byte("left unchanged")) {
			return fmt.Sprintf("no %q (... left unchanged) in its log", message)
		}
		return ""
	})
	if state := strings.TrimSpace(p.docker("inspect", "-f", "{{.State.Health.Status}}", id)); state == "healthy" {
		t.Errorf("the index is %s on a catalogue of a newer schema", state)
	}
	p.compose("stop", "index")
	if got, err := os.ReadFile(catalog); err != nil || !bytes.Equal(got, want) {
		t.Errorf("the refused catalogue was changed (%v)", err)
	}

	// Its own catalogue back: it serves again.
	if out, err := exec.Command("cp", "-a", held, catalog).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v\n%s", err, out)
	}
	p.up()
}

// bumpSchema sets the schema version of the catalogue file at path one
// above the one it has and returns the new one.
func bumpSchema(t *testing.T, path string) int {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var schema int
	err = db.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket([]byte("meta"))
		if meta == nil {
			return fmt.Errorf("no meta bucket")
		}
		v := meta.Get([]byte("schema"))
		if len(v) != 1 {
			return fmt.Errorf("schema %x, want one byte", v)
		}
		schema = int(v[0]) + 1
		return meta.Put([]byte("schema"), []byte{byte(schema)})
	})
	if err != nil {
		t.Fatalf("bump the catalogue's schema: %v", err)
	}
	return schema
}
