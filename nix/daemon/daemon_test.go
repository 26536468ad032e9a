//go:build unix

package daemon

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nixcache/nixcache/nix/nixhash"
)

// The tests in this file run the real nix-daemon, on a socket of their own
// (NIX_DAEMON_SOCKET_PATH, which nix-daemon and the Nix commands honour)
// and serving a store of their own: a chroot store in a temporary
// directory, logically /nix/store and physically ROOT/nix/store, so that
// nothing outside the test's directories is touched. The daemon reads it
// as it reads the host's /nix/store. Nix must be installed; a test that
// cannot find it fails.

// nixConfig is common to the daemon and its clients: root may build
// without the nixbld users, nothing is substituted from the network.
const nixConfig = "experimental-features = nix-command\n" +
	"build-users-group =\n" +
	"substituters =\n" +
	"sandbox = false\n"

// testDaemon is a nix-daemon serving a chroot store.
type testDaemon struct {
	root   string // the store is root/nix/store
	socket string
	env    []string // for Nix commands that are clients of the daemon
}

// startDaemon starts nix-daemon and waits until it accepts connections;
// it is stopped when the test ends.
func startDaemon(tb testing.TB) *testDaemon {
	tb.Helper()
	dir := tb.TempDir()
	d := &testDaemon{root: filepath.Join(dir, "root"), socket: filepath.Join(dir, "socket")}
	tb.Cleanup(func() { makeWritable(d.root) }) // runs before the removal of dir
	d.env = nixEnv(tb, "NIX_REMOTE=daemon", "NIX_DAEMON_SOCKET_PATH="+d.socket)

	path, err := exec.LookPath("nix-daemon")
	if err != nil {
		tb.Fatalf("nix-daemon is not installed: these tests need the real Nix (Debian: apt-get install nix-bin): %v", err)
	}
	cmd := exec.Command(path)
	// The store's builders run in a chroot (the store is not at its
	// logical path), where they see the host's /bin/sh and /usr/bin.
	cmd.Env = nixEnv(tb, "NIX_DAEMON_SOCKET_PATH="+d.socket)
	for i, kv := range cmd.Env {
		if strings.HasPrefix(kv, "NIX_CONFIG=") {
			cmd.Env[i] = kv + "extra-sandbox-paths = /bin /lib /lib64 /usr\nstore = local?root=" + d.root + "\n"
		}
	}
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // its connection processes too
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start nix-daemon: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	tb.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
	})

	// Poll until the daemon completes a handshake, dies, or 20s pass. (A
	// handshake, not just a connection: the process serving the first
	// connection creates the store's database, and a second one racing
	// it can fail.)
	deadline := time.After(20 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	var lastErr error
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c, err := Dial(ctx, d.socket)
		cancel()
		if err == nil {
			c.Close()
			return d
		}
		lastErr = err
		select {
		case err := <-exited:
			exited <- err
			tb.Fatalf("nix-daemon exited: %v\n%s", err, logs.String())
		case <-deadline:
			tb.Fatalf("nix-daemon does not answer on %s after 20s: %v\n%s", d.socket, lastErr, logs.String())
		case <-tick.C:
		}
	}
}

// nixEnv is our environment with Nix's configuration, a home and caches in
// a temporary directory, and extra.
func nixEnv(tb testing.TB, extra ...string) []string {
	home := tb.TempDir()
	env := []string{"NIX_CONFIG=" + nixConfig, "HOME=" + home, "XDG_CACHE_HOME=" + filepath.Join(home, ".cache")}
	for _, kv := range os.Environ() {
		switch k, _, _ := strings.Cut(kv, "="); k {
		case "NIX_CONFIG", "HOME", "XDG_CACHE_HOME", "NIX_REMOTE", "NIX_DAEMON_SOCKET_PATH":
		default:
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// runNix runs a Nix command in env (nixEnv if nil) and returns its output;
// the test fails if the command does.
func runNix(tb testing.TB, env []string, name string, args ...string) string {
	tb.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		tb.Fatalf("%s is not installed: these tests need the real Nix (Debian: apt-get install nix-bin): %v", name, err)
	}
	if env == nil {
		env = nixEnv(tb)
	}
	cmd := exec.Command(path, args...)
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		tb.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String()
}

// nix runs a Nix command as a client of the daemon.
func (d *testDaemon) nix(tb testing.TB, name string, args ...string) string {
	tb.Helper()
	return runNix(tb, d.env, name, args...)
}

// physical returns where a store path is on disk.
func (d *testDaemon) physical(storePath string) string { return filepath.Join(d.root, storePath) }

func (d *testDaemon) dial(tb testing.TB, opts ...Option) *Conn {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := Dial(ctx, d.socket, opts...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

// makeWritable lets the test remove a store: Nix makes its directories
// read-only.
func makeWritable(dir string) {
	filepath.WalkDir(dir, func(p string, e os.DirEntry, err error) error {
		if err == nil && e.IsDir() {
			os.Chmod(p, 0o755)
		}
		return nil
	})
}

// bigSize is the size of the file in the sample's big path.
const bigSize = 50 << 20

// sampleExpr builds: dep, a directory; top, with a file, an executable, a
// symlink, an empty file and directory, a reference to dep and one to
// itself; big, one 50 MiB file.
const sampleExpr = `
let
  mk = name: script: derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" script ];
    PATH = "/usr/bin:/bin";
  };
  dep = mk "dep-1.0" ''
    mkdir $out
    echo dependency > $out/file
  '';
in {
  inherit dep;
  top = mk "top-1.0" ''
    mkdir -p $out/bin $out/share/empty
    echo ${dep} > $out/dep
    printf '#!/bin/sh\necho hi\n' > $out/bin/hello
    chmod +x $out/bin/hello
    ln -s hello $out/bin/hi
    : > $out/share/empty-file
    head -c 100000 /dev/urandom > $out/share/random
    echo $out > $out/self
  '';
  big = mk "big-1.0" "head -c 52428800 /dev/urandom > $out";
}
`

// sample is what buildSample built.
type sample struct {
	dep, top, big string
	drv           string // top's deriver
	added         string // a file added with nix-store --add: content-addressed
	all           []string
}

// buildSample builds sampleExpr through the daemon, signs top, and adds a
// file.
func (d *testDaemon) buildSample(tb testing.TB) sample {
	tb.Helper()
	dir := tb.TempDir()
	file := filepath.Join(dir, "sample.nix")
	if err := os.WriteFile(file, []byte(sampleExpr), 0o644); err != nil {
		tb.Fatal(err)
	}
	build := func(attr string) string {
		return strings.TrimSpace(d.nix(tb, "nix-build", file, "-A", attr, "--no-out-link"))
	}
	var s sample
	s.dep, s.top, s.big = build("dep"), build("top"), build("big")
	s.drv = strings.TrimSpace(d.nix(tb, "nix-store", "--query", "--deriver", s.top))

	secret, public := filepath.Join(dir, "secret"), filepath.Join(dir, "public")
	d.nix(tb, "nix-store", "--generate-binary-cache-key", "test.example.org-1", secret, public)
	d.nix(tb, "nix", "store", "sign", "--key-file", secret, s.top)

	added := filepath.Join(dir, "added.txt")
	if err := os.WriteFile(added, []byte("added with nix-store --add\n"), 0o644); err != nil {
		tb.Fatal(err)
	}
	s.added = strings.TrimSpace(d.nix(tb, "nix-store", "--add", added))
	s.all = strings.Fields(d.nix(tb, "nix", "path-info", "--all"))
	return s
}

// pathInfoJSON is what nix path-info --json prints of a path.
type pathInfoJSON struct {
	Path             string   `json:"path"`
	NarHash          string   `json:"narHash"`
	NarSize          uint64   `json:"narSize"`
	References       []string `json:"references"`
	Deriver          string   `json:"deriver"`
	RegistrationTime int64    `json:"registrationTime"`
	Ultimate         bool     `json:"ultimate"`
	Signatures       []string `json:"signatures"`
	CA               string   `json:"ca"`
}

// allPathInfoJSON returns what nix path-info --json --all prints, by
// path. (Given a .drv, nix path-info would read it from the logical
// /nix/store, where it is not.)
func (d *testDaemon) allPathInfoJSON(tb testing.TB) map[string]pathInfoJSON {
	tb.Helper()
	var infos []pathInfoJSON
	if err := json.Unmarshal([]byte(d.nix(tb, "nix", "path-info", "--json", "--all")), &infos); err != nil {
		tb.Fatal(err)
	}
	byPath := map[string]pathInfoJSON{}
	for _, info := range infos {
		byPath[info.Path] = info
	}
	return byPath
}

// narDigest is the SHA-256 and size of an archive.
type narDigest struct {
	sha256 [32]byte
	size   int64
}

func digestOf(r io.Reader) (narDigest, error) {
	h := sha256.New()
	n, err := io.Copy(h, r)
	var d narDigest
	copy(d.sha256[:], h.Sum(nil))
	d.size = n
	return d, err
}

// dump returns the digest of what nix-store --dump prints for a store
// path, read from disk by Nix rather than through the daemon.
func (d *testDaemon) dump(tb testing.TB, storePath string) narDigest {
	tb.Helper()
	cmd := exec.Command("nix-store", "--dump", d.physical(storePath))
	cmd.Env = nixEnv(tb)
	out, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	dg, err := digestOf(out)
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		tb.Fatalf("nix-store --dump %s: %v\n%s", storePath, err, stderr.String())
	}
	return dg
}

// TestRealDaemon runs every query against the real nix-daemon at several
// protocol versions: Nix 2.3's, before and after each change that touches
// what this client sends or reads, the daemon's own, and ours.
func TestRealDaemon(t *testing.T) {
	d := startDaemon(t)
	s := d.buildSample(t)
	daemonMax := d.dial(t).Version()
	nixVersion := strings.Fields(d.nix(t, "nix-daemon", "--version"))
	t.Logf("nix-daemon %s speaks protocol %s", nixVersion[len(nixVersion)-1], daemonMax)

	paths := []string{s.dep, s.top, s.big, s.drv, s.added}
	want := d.allPathInfoJSON(t)
	if len(want[s.top].Signatures) == 0 || want[s.added].CA == "" || want[s.top].Deriver == "" {
		t.Fatalf("the sample lacks a signature, content address or deriver: %+v", want)
	}
	dumps := map[string]narDigest{}
	for _, p := range paths {
		dumps[p] = d.dump(t, p)
	}
	if dumps[s.big].size < bigSize {
		t.Fatalf("the big path's NAR is %d bytes, less than %d", dumps[s.big].size, bigSize)
	}
	const missing = "/nix/store/00000000000000000000000000000000-missing"

	versions := []Version{v(21), v(25), v(26), v(27), v(32), v(33), v(34), daemonMax, MaxVersion}
	slices.Sort(versions)
	for _, ver := range slices.Compact(versions) {
		t.Run(ver.String(), func(t *testing.T) {
			ctx := testCtx(t)
			c := d.dial(t, WithProtocolVersion(ver))
			if got := min(ver, daemonMax); c.Version() != got {
				t.Errorf("Version() = %s, want %s", c.Version(), got)
			}
			if got := c.DaemonVersion(); (got != "") != (c.Version() >= v(33)) || (got != "" && got != nixVersion[len(nixVersion)-1]) {
				t.Errorf("DaemonVersion() = %q at protocol %s; nix-daemon --version says %q", got, c.Version(), nixVersion)
			}

			for _, p := range paths {
				info, err := c.QueryPathInfo(ctx, p)
				if err != nil {
					t.Fatal(err)
				}
				checkPathInfo(t, info, want[p])
			}
			if info, err := c.QueryPathInfo(ctx, missing); !errors.Is(err, ErrNotFound) || info != nil {
				t.Errorf("QueryPathInfo(missing) = %v, %v; want ErrNotFound", info, err)
			}

			for _, p := range paths {
				hashPart := strings.TrimPrefix(p, "/nix/store/")[:32]
				if got, err := c.QueryPathFromHashPart(ctx, hashPart); err != nil || got != p {
					t.Errorf("QueryPathFromHashPart(%s) = %q, %v; want %s", hashPart, got, err, p)
				}
			}
			if got, err := c.QueryPathFromHashPart(ctx, "00000000000000000000000000000000"); !errors.Is(err, ErrNotFound) || got != "" {
				t.Errorf("QueryPathFromHashPart(unknown) = %q, %v; want ErrNotFound", got, err)
			}

			if ok, err := c.IsValidPath(ctx, s.top); !ok || err != nil {
				t.Errorf("IsValidPath(%s) = %v, %v; want true", s.top, ok, err)
			}
			if ok, err := c.IsValidPath(ctx, missing); ok || err != nil {
				t.Errorf("IsValidPath(missing) = %v, %v; want false", ok, err)
			}
			if got, err := c.QueryValidPaths(ctx, []string{missing, s.top, s.dep}); err != nil || !slices.Equal(got, sorted(s.top, s.dep)) {
				t.Errorf("QueryValidPaths = %q, %v; want %q", got, err, sorted(s.top, s.dep))
			}
			if got, err := c.QueryAllValidPaths(ctx); err != nil || !slices.Equal(got, sorted(s.all...)) {
				t.Errorf("QueryAllValidPaths = %q, %v;\nnix path-info --all: %q", got, err, s.all)
			}

			for _, p := range paths {
				var before runtime.MemStats
				runtime.ReadMemStats(&before)
				pr, pw := io.Pipe()
				got := make(chan narDigest, 1)
				go func() {
					dg, _ := digestOf(pr)
					got <- dg
				}()
				err := c.NarFromPath(ctx, p, pw)
				pw.CloseWithError(err)
				dg := <-got
				var after runtime.MemStats
				runtime.ReadMemStats(&after)
				if err != nil {
					t.Fatal(err)
				}
				if dg != dumps[p] {
					t.Errorf("NarFromPath(%s): %d bytes, sha256 %x; nix-store --dump: %d bytes, sha256 %x", p, dg.size, dg.sha256, dumps[p].size, dumps[p].sha256)
				}
				if wantHash, _ := nixhash.Parse(want[p].NarHash); !bytes.Equal(dg.sha256[:], wantHash.Digest) || uint64(dg.size) != want[p].NarSize {
					t.Errorf("NarFromPath(%s) does not match its NarHash and NarSize", p)
				}
				if p == s.big {
					if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 8<<20 {
						t.Errorf("NarFromPath of a %d MiB file allocated %d MiB: not streamed", bigSize>>20, alloc>>20)
					}
				}
			}
			// After all that, the connection is still in step.
			if ok, err := c.IsValidPath(ctx, s.big); !ok || err != nil {
				t.Errorf("IsValidPath after the NARs = %v, %v", ok, err)
			}

			// A request the daemon answers with an error (sent raw: the
			// exported method refuses such a hash part) leaves the
			// connection usable.
			_, err := c.queryPathFromHashPart(ctx, "query", "not-a-hash-part")
			var de *DaemonError
			if !errors.As(err, &de) || !strings.Contains(de.Message, "invalid hash part") {
				t.Errorf("query of a bad hash part: %v, want the daemon's 'invalid hash part'", err)
			}
			if ok, err := c.IsValidPath(ctx, s.top); !ok || err != nil {
				t.Errorf("IsValidPath after a daemon error = %v, %v; want true", ok, err)
			}

			// A NAR of a path that is not there comes as an error in place
			// of the archive, and the daemon hangs up.
			var out bytes.Buffer
			err = c.NarFromPath(ctx, missing, &out)
			if !errors.Is(err, ErrNotFound) || !errors.As(err, &de) {
				t.Errorf("NarFromPath(missing) = %v, want ErrNotFound and a DaemonError", err)
			}
			if out.Len() != 0 {
				t.Errorf("NarFromPath(missing) wrote %d bytes", out.Len())
			}
			if c.usable() {
				t.Error("connection usable after NarFromPath(missing)")
			}
		})
	}
}

func sorted(list ...string) []string {
	list = slices.Clone(list)
	slices.Sort(list)
	return list
}

func checkPathInfo(t *testing.T, info *PathInfo, want pathInfoJSON) {
	t.Helper()
	wantHash, err := nixhash.Parse(want.NarHash)
	if err != nil {
		t.Fatal(err)
	}
	got := fmt.Sprintf("%s narHash=%s narSize=%d refs=%q deriver=%q reg=%d ultimate=%v sigs=%q ca=%q",
		info.StorePath, info.NarHash.SRI(), info.NarSize, info.References, info.Deriver, info.RegistrationTime.Unix(), info.Ultimate, info.Sigs, info.CA)
	wantS := fmt.Sprintf("%s narHash=%s narSize=%d refs=%q deriver=%q reg=%d ultimate=%v sigs=%q ca=%q",
		want.Path, wantHash.SRI(), want.NarSize, want.References, want.Deriver, want.RegistrationTime, want.Ultimate, want.Signatures, want.CA)
	if got != wantS {
		t.Errorf("QueryPathInfo:\n got %s\nwant %s (nix path-info --json)", got, wantS)
	}
}

// TestRealDaemonDeleted: a path deleted with nix-store --delete is then
// reported not valid, on a connection opened before.
func TestRealDaemonDeleted(t *testing.T) {
	d := startDaemon(t)
	file := filepath.Join(t.TempDir(), "doomed.txt")
	if err := os.WriteFile(file, []byte("soon gone\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p := strings.TrimSpace(d.nix(t, "nix-store", "--add", file))
	hashPart := strings.TrimPrefix(p, "/nix/store/")[:32]
	ctx := testCtx(t)
	c := d.dial(t)
	if ok, err := c.IsValidPath(ctx, p); !ok || err != nil {
		t.Fatalf("IsValidPath(%s) before deletion = %v, %v", p, ok, err)
	}
	if _, err := c.QueryPathInfo(ctx, p); err != nil {
		t.Fatal(err)
	}
	if err := c.NarFromPath(ctx, p, io.Discard); err != nil {
		t.Fatal(err)
	}

	d.nix(t, "nix-store", "--delete", p)

	if ok, err := c.IsValidPath(ctx, p); ok || err != nil {
		t.Errorf("IsValidPath(%s) after deletion = %v, %v; want false", p, ok, err)
	}
	if _, err := c.QueryPathInfo(ctx, p); !errors.Is(err, ErrNotFound) {
		t.Errorf("QueryPathInfo after deletion: %v, want ErrNotFound", err)
	}
	if _, err := c.QueryPathFromHashPart(ctx, hashPart); !errors.Is(err, ErrNotFound) {
		t.Errorf("QueryPathFromHashPart after deletion: %v, want ErrNotFound", err)
	}
	if all, err := c.QueryAllValidPaths(ctx); err != nil || slices.Contains(all, p) {
		t.Errorf("QueryAllValidPaths after deletion = %q, %v; want it without %s", all, err, p)
	}
	if err := c.NarFromPath(ctx, p, io.Discard); !errors.Is(err, ErrNotFound) {
		t.Errorf("NarFromPath after deletion: %v, want ErrNotFound", err)
	}
}

// TestRealDaemonPool: many goroutines share a few connections.
func TestRealDaemonPool(t *testing.T) {
	d := startDaemon(t)
	file := filepath.Join(t.TempDir(), "shared.txt")
	if err := os.WriteFile(file, []byte("shared\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p := strings.TrimSpace(d.nix(t, "nix-store", "--add", file))
	pool, err := NewPool(d.socket, 4)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	ctx := testCtx(t)
	errs := make(chan error, 64)
	for range cap(errs) {
		go func() {
			errs <- pool.Do(ctx, func(c *Conn) error {
				info, err := c.QueryPathInfo(ctx, p)
				if err == nil && info.StorePath != p {
					err = fmt.Errorf("QueryPathInfo(%s) returned %s", p, info.StorePath)
				}
				return err
			})
		}()
	}
	for range cap(errs) {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	pool.mu.Lock()
	idle := len(pool.idle)
	pool.mu.Unlock()
	if idle < 1 || idle > 4 {
		t.Errorf("%d idle connections after the queries, want 1 to 4", idle)
	}
}
