// Package nixtest runs the real Nix for the tests of the nix module: the
// formats are tested against what Nix prints, not against our reading of
// its sources. Nix must be installed; a test that cannot find it fails.
//
// Every store is a chroot store ("--store ROOT": logically /nix/store,
// physically ROOT/nix/store) in a t.TempDir, so tests touch nothing outside
// their temporary directories.
package nixtest

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// StoreDir is the logical store directory of every test store.
const StoreDir = "/nix/store"

// config is what NIX_CONFIG sets: root may build without the nixbld users,
// nothing is substituted from the network, and the builders of chroot
// stores see the host's /bin/sh and its libraries.
const config = "experimental-features = nix-command\n" +
	"build-users-group =\n" +
	"substituters =\n" +
	"sandbox = false\n" +
	"extra-sandbox-paths = /bin /lib /lib64 /usr\n"

// Env returns the environment Nix runs in: ours, with NIX_CONFIG set and
// Nix's caches in a temporary directory.
func Env(t testing.TB) []string {
	t.Helper()
	env := []string{"NIX_CONFIG=" + config, "XDG_CACHE_HOME=" + t.TempDir()}
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); k != "NIX_CONFIG" && k != "XDG_CACHE_HOME" && k != "NIX_REMOTE" {
			env = append(env, kv)
		}
	}
	return env
}

// Run runs a Nix command (nix, nix-store, nix-hash...) and returns its
// standard output; the test fails if the command does.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := Try(t, nil, name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Try runs a Nix command with stdin (may be nil) and returns its standard
// output, or an error that includes its standard error.
func Try(t testing.TB, stdin []byte, name string, args ...string) (string, error) {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is not installed: the nix module's tests need the real Nix (Debian: apt-get install nix-bin): %v", name, err)
	}
	cmd := exec.Command(path, args...)
	cmd.Env = Env(t)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), nil
}

// Dump returns what nix-store --dump prints for a file system path.
func Dump(t testing.TB, path string) []byte {
	t.Helper()
	return []byte(Run(t, "nix-store", "--dump", path))
}

// DumpTo streams what nix-store --dump prints for path into w.
func DumpTo(t testing.TB, path string, w io.Writer) {
	t.Helper()
	cmd := exec.Command("nix-store", "--dump", path)
	cmd.Env = Env(t)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = w, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("nix-store --dump %s: %v\n%s", path, err, stderr.String())
	}
}

// Store is a chroot store in a temporary directory.
type Store struct {
	Root string
}

// NewStore makes an empty store; it is removed with the test's temporary
// directories (the store's read-only files made writable first).
func NewStore(t testing.TB) *Store {
	t.Helper()
	root := t.TempDir()
	t.Cleanup(func() { MakeWritable(root) })
	return &Store{Root: root}
}

// URI is the store's URI for --from and --store.
func (s *Store) URI() string { return "local?root=" + s.Root }

// Physical returns where a store path of this store is on disk.
func (s *Store) Physical(storePath string) string { return filepath.Join(s.Root, storePath) }

// Add adds a file system path (nix-store --add) and returns its store path.
func (s *Store) Add(t testing.TB, path string) string {
	t.Helper()
	return strings.TrimSpace(Run(t, "nix-store", "--store", s.Root, "--add", path))
}

// Build builds a Nix expression file and returns its output paths.
func (s *Store) Build(t testing.TB, file string) []string {
	t.Helper()
	return strings.Fields(Run(t, "nix-build", "--store", s.Root, file, "--no-out-link"))
}

// Closure returns the closure of paths, references first.
func (s *Store) Closure(t testing.TB, paths ...string) []string {
	t.Helper()
	args := append([]string{"--store", s.Root, "--query", "--requisites"}, paths...)
	return strings.Fields(Run(t, "nix-store", args...))
}

// CopyToFileCache copies paths and their closure into a new file:// binary
// cache with the given compression, signing with secretKeyFile unless it is
// "", and returns the cache's directory.
func (s *Store) CopyToFileCache(t testing.TB, compression, secretKeyFile string, paths ...string) string {
	t.Helper()
	dir := t.TempDir()
	to := "file://" + dir + "?compression=" + compression
	if secretKeyFile != "" {
		to += "&secret-key=" + secretKeyFile
	}
	args := append([]string{"copy", "--from", s.URI(), "--to", to}, paths...)
	Run(t, "nix", args...)
	return dir
}

// Closure of the sample built by BuildSample.
const sampleExpr = `
let
  dep = builtins.toFile "dep.txt" "hello, world\n";
  a = derivation {
    name = "a";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "echo ${dep} > $out" ];
  };
in derivation {
  name = "b-1.0";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" ''
    /bin/mkdir -p $out/bin $out/share/empty
    echo ${a} > $out/refs
    echo ${dep} >> $out/refs
    printf '#!/bin/sh\necho hi\n' > $out/bin/hello
    /bin/chmod +x $out/bin/hello
    /bin/ln -s hello $out/bin/hi
    /bin/ln -s /nonexistent $out/dangling
    : > $out/empty
    /usr/bin/head -c 100000 /dev/urandom > $out/share/random
  '' ];
}
`

// BuildSample builds a small closure of three paths into s: a text file
// added with builtins.toFile (content-addressed, no deriver), a derivation
// output referring to it, and one referring to both, holding executables,
// symlinks, empty files and directories. It returns the top path.
func (s *Store) BuildSample(t testing.TB) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), "sample.nix")
	if err := os.WriteFile(file, []byte(sampleExpr), 0o644); err != nil {
		t.Fatal(err)
	}
	out := s.Build(t, file)
	if len(out) != 1 {
		t.Fatalf("nix-build printed %q, want one path", out)
	}
	return out[0]
}

// GenerateKey makes a key pair with nix-store --generate-binary-cache-key
// and returns the files' paths.
func GenerateKey(t testing.TB, name string) (secretFile, publicFile string) {
	t.Helper()
	dir := t.TempDir()
	secretFile, publicFile = filepath.Join(dir, "secret"), filepath.Join(dir, "public")
	Run(t, "nix-store", "--generate-binary-cache-key", name, secretFile, publicFile)
	return secretFile, publicFile
}

// ReadFile reads a file or fails the test.
func ReadFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// MakeWritable adds the owner's write permission to everything under dir
// (Nix makes store paths read-only), so that it can be removed.
func MakeWritable(dir string) {
	_ = filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			if fi, err := d.Info(); err == nil {
				os.Chmod(path, fi.Mode().Perm()|0o700)
			}
		}
		return nil
	})
}
