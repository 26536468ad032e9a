// Package keyring holds the signer's keys and their state: which sign
// (active) and which were retired, for good.
//
// Keys come from two places: secret key files the operator names
// (-key-files, never written to), and a key directory (-key-dir) where the
// signer writes the keys it generates, "<name>.key" (mode 0600) with
// "<name>.key.pub" beside it. The key directory also holds the file
// "retired": the public keys of the retired keys, one a line, whichever
// place their secret came from. A retired key never signs again, across
// restarts; the secret file of a retired key from the key directory is
// renamed "<name>.key.retired" so that nothing loads it by mistake. Public
// halves of retired keys stay listed (inactive): clients still need them
// to trust what those keys signed before.
package keyring

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/nixcache/nixcache/nix/signature"
	"github.com/nixcache/nixcache/services/signer/internal/keyfile"
)

// File names in the key directory.
const (
	secretSuffix  = ".key"
	publicSuffix  = ".key.pub"
	retiredSuffix = ".key.retired"
	// RetiredFile lists the retired keys' public halves.
	RetiredFile = "retired"
)

// maxNameLen bounds a generated key's name.
const maxNameLen = 128

// Errors of Generate and Retire; match them with errors.Is.
var (
	ErrInvalidName = errors.New("invalid key name")
	ErrExists      = errors.New("key name already in use")
	ErrNotFound    = errors.New("no such key")
	ErrLastActive  = errors.New("the last active key cannot be retired")
	ErrNoKeyDir    = errors.New("no key directory (-key-dir)")
)

// Config says where the keys are.
type Config struct {
	// KeyFiles are secret key files to load, in order; they are never
	// written to.
	KeyFiles []string
	// Dir is the key directory, created (mode 0700) if missing; "" means
	// none, and then keys can be neither generated nor retired.
	Dir string
	// Log gets warnings; nil discards them.
	Log *slog.Logger
}

// Info describes a key; it holds no secret.
type Info struct {
	Public signature.PublicKey
	// Active keys sign; retired ones never do again.
	Active bool
	// File is where the secret key was loaded from or written to; "" for
	// a retired key whose secret the signer no longer has.
	File string
}

// Ring is the set of keys; it is safe for concurrent use.
type Ring struct {
	dir string
	log *slog.Logger

	mu   sync.RWMutex
	keys []*key // in List order
}

type key struct {
	pub    signature.PublicKey
	secret signature.SecretKey // the zero key once retired
	active bool
	file   string
	group  int // 0: -key-files, 1: key directory, 2: known only as retired
	order  int // position in -key-files
}

// Open loads the keys of cfg and the retired list. A retired key's name
// found again with another public key is an error: the operator must
// rename one of them. Open does not require an active key; the caller
// decides what to do without one.
func Open(cfg Config) (*Ring, error) {
	r := &Ring{dir: cfg.Dir, log: cfg.Log}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	byName := map[string]*key{}
	add := func(k *key) error {
		if prev, ok := byName[k.pub.Name]; ok {
			return fmt.Errorf("load secret key %s: key name %q is already used by %s", k.file, k.pub.Name, prev.file)
		}
		byName[k.pub.Name] = k
		r.keys = append(r.keys, k)
		return nil
	}
	loaded := map[string]bool{} // absolute paths
	for i, p := range cfg.KeyFiles {
		sk, err := signature.LoadSecretKeyFile(p)
		if err != nil {
			return nil, err
		}
		if abs, err := filepath.Abs(p); err == nil {
			loaded[abs] = true
		}
		if err := add(&key{pub: sk.Public(), secret: sk, active: true, file: p, group: 0, order: i}); err != nil {
			return nil, err
		}
	}
	if r.dir == "" {
		r.sort()
		return r, nil
	}
	if err := os.MkdirAll(r.dir, 0o700); err != nil {
		return nil, fmt.Errorf("key directory: %w", err)
	}
	entries, err := os.ReadDir(r.dir)
	if err != nil {
		return nil, fmt.Errorf("key directory: %w", err)
	}
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), secretSuffix) || !e.Type().IsRegular() {
			continue
		}
		p := filepath.Join(r.dir, e.Name())
		if abs, err := filepath.Abs(p); err == nil && loaded[abs] {
			continue // also named in -key-files
		}
		sk, err := signature.LoadSecretKeyFile(p)
		if err != nil {
			return nil, err
		}
		if err := add(&key{pub: sk.Public(), secret: sk, active: true, file: p, group: 1}); err != nil {
			return nil, err
		}
	}
	retired, err := readRetired(r.retiredPath())
	if err != nil {
		return nil, err
	}
	for _, pub := range retired {
		k, ok := byName[pub.Name]
		if !ok {
			k = &key{pub: pub, group: 2}
			byName[pub.Name] = k
			r.keys = append(r.keys, k)
			continue
		}
		if k.pub.String() != pub.String() {
			return nil, fmt.Errorf("key %q in %s is not the key retired under that name (%s lists another public key): give it another name",
				pub.Name, k.file, r.retiredPath())
		}
		k.active = false
		k.secret = signature.SecretKey{}
	}
	r.sort()
	return r, nil
}

// FromKeys returns a ring of keys held in memory only, all active, without
// a key directory.
func FromKeys(keys []signature.SecretKey) (*Ring, error) {
	r := &Ring{log: slog.New(slog.DiscardHandler)}
	seen := map[string]bool{}
	for i, k := range keys {
		if len(k.Public().Key) == 0 {
			return nil, fmt.Errorf("key %d (%q) holds no key", i, k.Name)
		}
		if seen[k.Name] {
			return nil, fmt.Errorf("two keys named %q", k.Name)
		}
		seen[k.Name] = true
		r.keys = append(r.keys, &key{pub: k.Public(), secret: k, active: true, order: i})
	}
	return r, nil
}

// sort puts the keys in List order: -key-files in order, then the key
// directory's by name, then the retired keys known only by their public
// half, by name.
func (r *Ring) sort() {
	sort.SliceStable(r.keys, func(i, j int) bool {
		a, b := r.keys[i], r.keys[j]
		switch {
		case a.group != b.group:
			return a.group < b.group
		case a.group == 0:
			return a.order < b.order
		default:
			return a.pub.Name < b.pub.Name
		}
	})
}

// Active returns the keys that sign, in List order.
func (r *Ring) Active() []signature.SecretKey {
	r.mu.RLock()
	defer r.mu.RUnlock()
	var out []signature.SecretKey
	for _, k := range r.keys {
		if k.active {
			out = append(out, k.secret)
		}
	}
	return out
}

// List describes every key: those from -key-files in order, then those of
// the key directory by name, then retired ones the signer has only the
// public half of.
func (r *Ring) List() []Info {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]Info, len(r.keys))
	for i, k := range r.keys {
		out[i] = k.info()
	}
	return out
}

// Counts returns how many keys are active and retired.
func (r *Ring) Counts() (active, retired int) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	for _, k := range r.keys {
		if k.active {
			active++
		} else {
			retired++
		}
	}
	return active, retired
}

func (k *key) info() Info {
	return Info{Public: k.pub, Active: k.active, File: k.file}
}

// ValidateName checks the name of a key to generate: 1 to 128 letters,
// digits, '.', '_' and '-', starting with a letter or digit (it names a
// file, and Nix writes it into narinfo Sig lines).
func ValidateName(name string) error {
	if name == "" || len(name) > maxNameLen {
		return fmt.Errorf("%w: want 1 to %d characters, got %d", ErrInvalidName, maxNameLen, len(name))
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		alnum := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
		if i == 0 && !alnum {
			return fmt.Errorf("%w: %q must start with a letter or digit", ErrInvalidName, name)
		}
		if !alnum && c != '.' && c != '_' && c != '-' {
			return fmt.Errorf("%w: %q may hold only letters, digits, '.', '_' and '-'", ErrInvalidName, name)
		}
	}
	return nil
}

// Generate makes a new active key named name in the key directory. A
// name any key has, retired ones included, is ErrExists.
func (r *Ring) Generate(name string) (Info, error) {
	if err := ValidateName(name); err != nil {
		return Info{}, err
	}
	if r.dir == "" {
		return Info{}, fmt.Errorf("generate key %q: %w", name, ErrNoKeyDir)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if k := r.find(name); k != nil {
		state := "an active key"
		if !k.active {
			state = "a retired key"
		}
		return Info{}, fmt.Errorf("generate key %q: %w by %s", name, ErrExists, state)
	}
	base := filepath.Join(r.dir, name)
	for _, p := range []string{base + secretSuffix, base + publicSuffix, base + retiredSuffix} {
		if _, err := os.Lstat(p); err == nil {
			return Info{}, fmt.Errorf("generate key %q: %w: %s exists", name, ErrExists, p)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return Info{}, fmt.Errorf("generate key %q: %w", name, err)
		}
	}
	secretPath := base + secretSuffix
	if _, err := keyfile.Generate(name, secretPath, base+publicSuffix); err != nil {
		return Info{}, err
	}
	if err := syncDir(r.dir); err != nil {
		return Info{}, fmt.Errorf("generate key %q: %w", name, err)
	}
	sk, err := signature.LoadSecretKeyFile(secretPath)
	if err != nil {
		return Info{}, err
	}
	k := &key{pub: sk.Public(), secret: sk, active: true, file: secretPath, group: 1}
	r.keys = append(r.keys, k)
	r.sort()
	return k.info(), nil
}

// Retire stops the key named name from signing, for good: the retired
// list in the key directory remembers it. Retiring a retired key changes
// nothing; retiring the last active key is ErrLastActive.
func (r *Ring) Retire(name string) (Info, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	k := r.find(name)
	switch {
	case k == nil:
		return Info{}, fmt.Errorf("retire key %q: %w", name, ErrNotFound)
	case !k.active:
		return k.info(), nil
	case r.dir == "":
		return Info{}, fmt.Errorf("retire key %q: %w: the signer keeps the retired keys there", name, ErrNoKeyDir)
	}
	active := 0
	var retired []signature.PublicKey
	for _, other := range r.keys {
		if other.active {
			active++
		} else {
			retired = append(retired, other.pub)
		}
	}
	if active == 1 {
		return Info{}, fmt.Errorf("retire key %q: %w: generate another one first", name, ErrLastActive)
	}
	if err := writeRetired(r.retiredPath(), append(retired, k.pub)); err != nil {
		return Info{}, fmt.Errorf("retire key %q: %w", name, err)
	}
	k.active = false
	k.secret = signature.SecretKey{}
	if k.group == 1 {
		// The retired list is what counts; the rename keeps the secret
		// from being loaded even if that list were lost.
		// Renamed, it is known by its public half only, as after a restart.
		if err := os.Rename(k.file, strings.TrimSuffix(k.file, secretSuffix)+retiredSuffix); err != nil {
			r.log.Warn("retired key's secret file not renamed", "key", name, "file", k.file, "err", err)
		} else {
			k.file, k.group = "", 2
			r.sort()
		}
	}
	return k.info(), nil
}

func (r *Ring) find(name string) *key {
	for _, k := range r.keys {
		if k.pub.Name == name {
			return k
		}
	}
	return nil
}

func (r *Ring) retiredPath() string { return filepath.Join(r.dir, RetiredFile) }

// readRetired reads the retired list; a missing file is an empty list.
func readRetired(path string) ([]signature.PublicKey, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("retired keys: %w", err)
	}
	defer f.Close()
	var out []signature.PublicKey
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		pub, err := signature.ParsePublicKey(line)
		if err != nil {
			return nil, fmt.Errorf("retired keys: %s line %d: %w", path, n, err)
		}
		out = append(out, pub)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("retired keys: %s: %w", path, err)
	}
	return out, nil
}

// writeRetired replaces the retired list atomically.
func writeRetired(path string, keys []signature.PublicKey) error {
	var b strings.Builder
	b.WriteString("# Keys retired with RetireKey: they never sign again. One public key a line.\n")
	for _, k := range keys {
		b.WriteString(k.String() + "\n")
	}
	tmp := path + ".tmp"
	os.Remove(tmp)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644) //nolint:gosec // G302: public keys, meant to be read
	if err != nil {
		return err
	}
	_, err = f.WriteString(b.String())
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return syncDir(filepath.Dir(path))
}

// syncDir makes a directory's entries durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
