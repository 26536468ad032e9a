package keyring

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nixcache/nixcache/nix/signature"
)

func writeKey(t *testing.T, path, name string) signature.SecretKey {
	t.Helper()
	k, err := signature.Generate(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(k.Encode()), 0o600); err != nil {
		t.Fatal(err)
	}
	return k
}

func names(infos []Info) []string {
	var out []string
	for _, i := range infos {
		s := i.Public.Name
		if !i.Active {
			s += "(retired)"
		}
		out = append(out, s)
	}
	return out
}

func activeNames(r *Ring) []string {
	var out []string
	for _, k := range r.Active() {
		out = append(out, k.Name)
	}
	return out
}

func TestValidateName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"cache.example.org-1", true},
		{"a", true},
		{"9_x", true},
		{strings.Repeat("a", 128), true},
		{strings.Repeat("a", 129), false},
		{"", false},
		{".hidden", false},
		{"-flag", false},
		{"a b", false},
		{"a:b", false},
		{"../x", false},
		{"a/b", false},
		{"é", false},
		{"a\n", false},
	}
	for _, tt := range tests {
		err := ValidateName(tt.name)
		if (err == nil) != tt.ok || err != nil && !errors.Is(err, ErrInvalidName) {
			t.Errorf("ValidateName(%q) = %v, want ok=%v", tt.name, err, tt.ok)
		}
	}
}

// TestLifecycle generates and retires keys, reopening the ring after each
// step: what was retired stays retired.
func TestLifecycle(t *testing.T) {
	files := t.TempDir()
	keyFile := filepath.Join(files, "secret.key")
	writeKey(t, keyFile, "cache-1")
	keyFileBefore, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "keys") // created by Open
	cfg := Config{KeyFiles: []string{keyFile}, Dir: dir}
	r, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	reopen := func() {
		t.Helper()
		if r, err = Open(cfg); err != nil {
			t.Fatal(err)
		}
	}
	fi, err := os.Stat(dir)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("key directory: %v, %v; want mode 0700", fi, err)
	}

	steps := []struct {
		name    string
		do      func() error
		want    error // nil or the error kind
		list    []string
		active  []string
		reopens bool
	}{
		{"start", func() error { return nil }, nil, []string{"cache-1"}, []string{"cache-1"}, true},
		{"generate cache-3", func() error { _, err := r.Generate("cache-3"); return err }, nil,
			[]string{"cache-1", "cache-3"}, []string{"cache-1", "cache-3"}, false},
		{"generate cache-2 sorts by name", func() error { _, err := r.Generate("cache-2"); return err }, nil,
			[]string{"cache-1", "cache-2", "cache-3"}, []string{"cache-1", "cache-2", "cache-3"}, true},
		{"generate an existing name", func() error { _, err := r.Generate("cache-2"); return err }, ErrExists,
			[]string{"cache-1", "cache-2", "cache-3"}, []string{"cache-1", "cache-2", "cache-3"}, false},
		{"generate the key file's name", func() error { _, err := r.Generate("cache-1"); return err }, ErrExists,
			[]string{"cache-1", "cache-2", "cache-3"}, []string{"cache-1", "cache-2", "cache-3"}, false},
		{"generate a bad name", func() error { _, err := r.Generate("../evil"); return err }, ErrInvalidName,
			[]string{"cache-1", "cache-2", "cache-3"}, []string{"cache-1", "cache-2", "cache-3"}, false},
		{"retire the key file's key", func() error { _, err := r.Retire("cache-1"); return err }, nil,
			[]string{"cache-1(retired)", "cache-2", "cache-3"}, []string{"cache-2", "cache-3"}, true},
		{"retire it again", func() error { _, err := r.Retire("cache-1"); return err }, nil,
			[]string{"cache-1(retired)", "cache-2", "cache-3"}, []string{"cache-2", "cache-3"}, false},
		{"retire a generated key", func() error { _, err := r.Retire("cache-2"); return err }, nil,
			[]string{"cache-1(retired)", "cache-3", "cache-2(retired)"}, []string{"cache-3"}, true},
		{"retire the last active key", func() error { _, err := r.Retire("cache-3"); return err }, ErrLastActive,
			[]string{"cache-1(retired)", "cache-3", "cache-2(retired)"}, []string{"cache-3"}, true},
		{"retire an unknown key", func() error { _, err := r.Retire("cache-9"); return err }, ErrNotFound,
			[]string{"cache-1(retired)", "cache-3", "cache-2(retired)"}, []string{"cache-3"}, false},
		{"generate a retired name", func() error { _, err := r.Generate("cache-2"); return err }, ErrExists,
			[]string{"cache-1(retired)", "cache-3", "cache-2(retired)"}, []string{"cache-3"}, false},
	}
	for _, s := range steps {
		err := s.do()
		if s.want == nil && err != nil || s.want != nil && !errors.Is(err, s.want) {
			t.Fatalf("%s: error %v, want %v", s.name, err, s.want)
		}
		check := func(when string) {
			t.Helper()
			if got := names(r.List()); !slices.Equal(got, s.list) {
				t.Errorf("%s%s: List = %v, want %v", s.name, when, got, s.list)
			}
			if got := activeNames(r); !slices.Equal(got, s.active) {
				t.Errorf("%s%s: Active = %v, want %v", s.name, when, got, s.active)
			}
		}
		check("")
		if s.reopens {
			reopen()
			check(" (reopened)")
		}
	}

	// Files: the key file untouched; generated keys 0600 with their public
	// key beside; the retired generated key renamed.
	if after, err := os.ReadFile(keyFile); err != nil || string(after) != string(keyFileBefore) {
		t.Errorf("the -key-files file changed: %v", err)
	}
	for file, mode := range map[string]os.FileMode{
		"cache-3.key": 0o600, "cache-3.key.pub": 0o644, "cache-2.key.retired": 0o600, RetiredFile: 0o644,
	} {
		fi, err := os.Stat(filepath.Join(dir, file))
		if err != nil {
			t.Errorf("%s: %v", file, err)
		} else if fi.Mode().Perm() != mode {
			t.Errorf("%s: mode %v, want %v", file, fi.Mode().Perm(), mode)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "cache-2.key")); err == nil {
		t.Error("the retired key's secret is still loadable as cache-2.key")
	}
	pub, err := os.ReadFile(filepath.Join(dir, "cache-3.key.pub"))
	if err != nil {
		t.Fatal(err)
	}
	if infos := r.List(); string(pub) != infos[1].Public.String() {
		t.Errorf("cache-3.key.pub holds %q, the ring %q", pub, infos[1].Public)
	}

	// Even with the retired file lost, the renamed secret stays unloaded.
	if err := os.Remove(filepath.Join(dir, RetiredFile)); err != nil {
		t.Fatal(err)
	}
	reopen()
	if got := activeNames(r); !slices.Equal(got, []string{"cache-1", "cache-3"}) {
		t.Errorf("without the retired list: active %v; cache-2 must stay retired", got)
	}
}

func TestNoKeyDir(t *testing.T) {
	dir := t.TempDir()
	writeKey(t, filepath.Join(dir, "a"), "cache-1")
	writeKey(t, filepath.Join(dir, "b"), "cache-2")
	r, err := Open(Config{KeyFiles: []string{filepath.Join(dir, "a"), filepath.Join(dir, "b")}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Generate("cache-3"); !errors.Is(err, ErrNoKeyDir) {
		t.Errorf("Generate without a key directory: %v", err)
	}
	if _, err := r.Retire("cache-1"); !errors.Is(err, ErrNoKeyDir) {
		t.Errorf("Retire without a key directory: %v", err)
	}
	if got := activeNames(r); !slices.Equal(got, []string{"cache-1", "cache-2"}) {
		t.Errorf("active %v", got)
	}
}

func TestOpenRejects(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, files, dir string) Config
		want  string
	}{
		{"retired name with another key", func(t *testing.T, files, dir string) Config {
			other, _ := signature.Generate("cache-1")
			os.WriteFile(filepath.Join(dir, RetiredFile), []byte(other.Public().String()+"\n"), 0o644)
			writeKey(t, filepath.Join(files, "k"), "cache-1")
			return Config{KeyFiles: []string{filepath.Join(files, "k")}, Dir: dir}
		}, "not the key retired under that name"},
		{"same name in key file and key directory", func(t *testing.T, files, dir string) Config {
			writeKey(t, filepath.Join(files, "k"), "cache-1")
			writeKey(t, filepath.Join(dir, "cache-1.key"), "cache-1")
			return Config{KeyFiles: []string{filepath.Join(files, "k")}, Dir: dir}
		}, `key name "cache-1" is already used`},
		{"readable key in key directory", func(t *testing.T, files, dir string) Config {
			p := filepath.Join(dir, "cache-1.key")
			writeKey(t, p, "cache-1")
			os.Chmod(p, 0o644)
			return Config{Dir: dir}
		}, "group or others"},
		{"bad retired file", func(t *testing.T, files, dir string) Config {
			os.WriteFile(filepath.Join(dir, RetiredFile), []byte("# ok\nnot a key\n"), 0o644)
			return Config{Dir: dir}
		}, "line 2"},
		{"missing key file", func(t *testing.T, files, dir string) Config {
			return Config{KeyFiles: []string{filepath.Join(files, "absent")}, Dir: dir}
		}, "absent"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := tt.setup(t, t.TempDir(), t.TempDir())
			_, err := Open(cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Open error %v, want one containing %q", err, tt.want)
			}
		})
	}
}

// TestOpenKeyFiles: the secret key files are read in order (the first is
// the primary), each refused with what is wrong with it; two keys with one
// name are an error.
func TestOpenKeyFiles(t *testing.T) {
	dir := t.TempDir()
	file := func(name, keyName string, perm os.FileMode) (string, signature.SecretKey) {
		p := filepath.Join(dir, name)
		k := writeKey(t, p, keyName)
		if err := os.Chmod(p, perm); err != nil {
			t.Fatal(err)
		}
		return p, k
	}
	a, ka := file("a", "cache-a-1", 0o600)
	b, kb := file("b", "cache-b-1", 0o400)
	open, kOpen := file("open", "cache-open-1", 0o644)
	groupW, _ := file("group-writable", "cache-gw-1", 0o620)
	dup, _ := file("dup", "cache-a-1", 0o600)
	garbage := filepath.Join(dir, "garbage")
	if err := os.WriteFile(garbage, []byte("this is not a key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing")

	tests := []struct {
		name      string
		paths     []string
		wantNames []string
		wantErr   []string // substrings of the error
	}{
		{name: "one", paths: []string{a}, wantNames: []string{"cache-a-1"}},
		{name: "two in order", paths: []string{b, a}, wantNames: []string{"cache-b-1", "cache-a-1"}},
		{name: "world readable", paths: []string{a, open}, wantErr: []string{open, "0644", "group or others", "chmod 600"}},
		{name: "group writable", paths: []string{groupW}, wantErr: []string{groupW, "0620", "chmod 600"}},
		{name: "missing", paths: []string{missing}, wantErr: []string{missing, "no such file"}},
		{name: "garbage", paths: []string{garbage}, wantErr: []string{garbage}},
		{name: "duplicate name", paths: []string{a, dup}, wantErr: []string{dup, `"cache-a-1"`, "already used by " + a}},
		{name: "same file twice", paths: []string{a, a}, wantErr: []string{"already used"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := Open(Config{KeyFiles: tt.paths})
			if tt.wantErr != nil {
				if err == nil {
					t.Fatalf("Open = %v, want an error", names(r.List()))
				}
				for _, want := range tt.wantErr {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("error %q does not contain %q", err, want)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := activeNames(r); !slices.Equal(got, tt.wantNames) {
				t.Errorf("active keys %v, want %v", got, tt.wantNames)
			}
		})
	}

	// The keys loaded are the keys written, and errors never quote one.
	r, err := Open(Config{KeyFiles: []string{a, b}})
	if err != nil {
		t.Fatal(err)
	}
	if keys := r.Active(); keys[0].Public().String() != ka.Public().String() || keys[1].Public().String() != kb.Public().String() {
		t.Errorf("loaded public keys %v, %v differ from the written ones", keys[0].Public(), keys[1].Public())
	}
	_, err = Open(Config{KeyFiles: []string{open}})
	if err == nil || strings.Contains(err.Error(), kOpen.Encode()[len(kOpen.Name)+1:]) {
		t.Errorf("error %v quotes the secret key", err)
	}
}

func TestOpenKeyFileInKeyDir(t *testing.T) {
	// run-local style: the first key file lives in the key directory too.
	dir := t.TempDir()
	p := filepath.Join(dir, "main.key")
	writeKey(t, p, "cache-1")
	writeKey(t, filepath.Join(dir, "cache-2.key"), "cache-2")
	os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("not a key"), 0o644)
	r, err := Open(Config{KeyFiles: []string{p}, Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if got := names(r.List()); !slices.Equal(got, []string{"cache-1", "cache-2"}) {
		t.Errorf("List = %v", got)
	}
}

func TestFromKeys(t *testing.T) {
	a, _ := signature.Generate("a")
	if _, err := FromKeys([]signature.SecretKey{a, a}); err == nil || !strings.Contains(err.Error(), `two keys named "a"`) {
		t.Errorf("duplicate names: %v", err)
	}
	if _, err := FromKeys([]signature.SecretKey{{Name: "x"}}); err == nil || !strings.Contains(err.Error(), "holds no key") {
		t.Errorf("zero key: %v", err)
	}
}
