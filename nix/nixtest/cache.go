package nixtest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// cacheConfig isolates Nix from the machine's configuration: no substituters, no
// trusted keys besides those a command is given, no build users.
const cacheConfig = "experimental-features = nix-command\n" +
	"build-users-group =\n" +
	"substituters =\n" +
	"trusted-public-keys =\n" +
	"secret-key-files =\n"

// Cache runs Nix with a private home, a chroot store and a file:// binary
// cache, all under one temporary directory, for tests that check keys and
// signatures against Nix.
type Cache struct {
	t     testing.TB
	dir   string
	env   []string
	store string // chroot store URI
	cache string // directory of the file:// binary cache
}

// Path is a store path copied into the binary cache.
type Path struct {
	StorePath   string // absolute
	NarInfo     string // file of its narinfo in the cache
	Fingerprint string // as computed from the narinfo
}

// NewCache returns a Cache; it fails the test if nix or nix-store is
// missing.
func NewCache(t testing.TB) *Cache {
	t.Helper()
	for _, bin := range []string{"nix", "nix-store"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("these tests need the real Nix: %v", err)
		}
	}
	dir := t.TempDir()
	home := filepath.Join(dir, "home")
	if err := os.Mkdir(home, 0o700); err != nil {
		t.Fatal(err)
	}
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "NIX_") && !strings.HasPrefix(kv, "XDG_") && !strings.HasPrefix(kv, "HOME=") {
			env = append(env, kv)
		}
	}
	store := "local?root=" + filepath.Join(dir, "chroot")
	// The chroot store is also the default store, so that no command
	// needs the machine's store or daemon.
	env = append(env, "HOME="+home, "NIX_CONFIG="+cacheConfig+"store = "+store+"\n",
		"NIX_USER_CONF_FILES="+filepath.Join(home, "nix.conf"))
	return &Cache{t: t, dir: dir, env: env, store: store, cache: filepath.Join(dir, "cache")}
}

// Run runs a Nix command and returns its standard output; the error holds
// its standard error.
func (e *Cache) Run(args ...string) (string, error) {
	e.t.Helper()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = e.env
	cmd.Dir = e.dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s: %w\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), nil
}

// MustRun is Run failing the test on error.
func (e *Cache) MustRun(args ...string) string {
	e.t.Helper()
	out, err := e.Run(args...)
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

// GenerateKey makes a key pair named name with nix-store
// --generate-binary-cache-key and returns its files.
func (e *Cache) GenerateKey(name string) (secretFile, publicFile string) {
	e.t.Helper()
	d, err := os.MkdirTemp(e.dir, "key-")
	if err != nil {
		e.t.Fatal(err)
	}
	secretFile, publicFile = filepath.Join(d, "secret"), filepath.Join(d, "public")
	e.MustRun("nix-store", "--generate-binary-cache-key", name, secretFile, publicFile)
	return secretFile, publicFile
}

// AddPath adds a file holding content to the chroot store and copies it to
// the binary cache, signed with secretKeyFile unless it is "". The
// narinfo's CA line is removed: Nix trusts content-addressed paths without
// signatures, and these tests are about signatures.
func (e *Cache) AddPath(content, secretKeyFile string) Path {
	e.t.Helper()
	f, err := os.CreateTemp(e.dir, "file-")
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := f.WriteString(content); err != nil {
		e.t.Fatal(err)
	}
	f.Close()
	sp := strings.TrimSpace(e.MustRun("nix", "store", "add-file", "--store", e.store, f.Name()))
	to := "file://" + e.cache
	if secretKeyFile != "" {
		to += "?secret-key=" + secretKeyFile
	}
	e.MustRun("nix", "copy", "--from", e.store, "--to", to, sp)

	hashPart, _, _ := strings.Cut(strings.TrimPrefix(sp, StoreDir+"/"), "-")
	p := Path{StorePath: sp, NarInfo: filepath.Join(e.cache, hashPart+".narinfo")}
	data, err := os.ReadFile(p.NarInfo)
	if err != nil {
		e.t.Fatal(err)
	}
	var kept []string
	fields := map[string]string{}
	for _, line := range strings.SplitAfter(string(data), "\n") {
		k, v, _ := strings.Cut(strings.TrimSuffix(line, "\n"), ": ")
		fields[k] = v
		if k != "CA" {
			kept = append(kept, line)
		}
	}
	if err := os.WriteFile(p.NarInfo, []byte(strings.Join(kept, "")), 0o644); err != nil {
		e.t.Fatal(err)
	}
	var refs []string
	for _, r := range strings.Fields(fields["References"]) {
		refs = append(refs, StoreDir+"/"+r)
	}
	slices.Sort(refs)
	p.Fingerprint = "1;" + fields["StorePath"] + ";" + fields["NarHash"] + ";" + fields["NarSize"] + ";" + strings.Join(refs, ",")
	return p
}

// Sigs returns the narinfo's Sig lines' values.
func (e *Cache) Sigs(p Path) []string {
	e.t.Helper()
	data, err := os.ReadFile(p.NarInfo)
	if err != nil {
		e.t.Fatal(err)
	}
	var sigs []string
	for _, line := range strings.Split(string(data), "\n") {
		if sig, ok := strings.CutPrefix(line, "Sig: "); ok {
			sigs = append(sigs, sig)
		}
	}
	return sigs
}

// AddSig appends a Sig line to the narinfo of p.
func (e *Cache) AddSig(p Path, sig string) {
	e.t.Helper()
	f, err := os.OpenFile(p.NarInfo, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		e.t.Fatal(err)
	}
	defer f.Close()
	if _, err := fmt.Fprintf(f, "Sig: %s\n", sig); err != nil {
		e.t.Fatal(err)
	}
}

// Verify runs nix store verify on p in the binary cache, trusting only
// publicKey ("<name>:<base64>"); it returns nil when Nix finds p intact and
// trusted.
func (e *Cache) Verify(p Path, publicKey string) error {
	e.t.Helper()
	_, err := e.Run("nix", "store", "verify", "--store", "file://"+e.cache,
		"--trusted-public-keys", publicKey, p.StorePath)
	return err
}
