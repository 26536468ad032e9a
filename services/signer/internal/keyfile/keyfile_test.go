package keyfile

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nixcache/nixcache/nix/signature"
)

// writeKey writes a new key named name to dir/file with mode perm and
// returns the key.
func writeKey(t *testing.T, dir, file, name string, perm os.FileMode) (string, signature.SecretKey) {
	t.Helper()
	k, err := signature.Generate(name)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, file)
	if err := os.WriteFile(p, []byte(k.Encode()+"\n"), perm); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, perm); err != nil {
		t.Fatal(err)
	}
	return p, k
}

func TestGenerate(t *testing.T) {
	dir := t.TempDir()
	sec, pub := filepath.Join(dir, "secret"), filepath.Join(dir, "public")
	pk, err := Generate("cache.example.org-1", sec, pub)
	if err != nil {
		t.Fatal(err)
	}
	checkMode(t, sec, 0o600)
	checkMode(t, pub, 0o644)
	checkContent(t, pub, pk.String())
	sk, err := signature.LoadSecretKeyFile(sec)
	if err != nil {
		t.Fatal(err)
	}
	if got := sk.Public().String(); got != pk.String() {
		t.Errorf("secret key's public half %s, want %s", got, pk)
	}
	sig := sk.Sign("some fingerprint")
	if !pk.Verify("some fingerprint", sig) {
		t.Errorf("public key does not verify the secret key's signature")
	}
}

func TestGenerateRefuses(t *testing.T) {
	tests := []struct {
		name       string
		keyName    string
		existing   string // "secret" or "public": that file exists already
		wantErr    string
		secretLeft bool
	}{
		{name: "secret exists", keyName: "k-1", existing: "secret", wantErr: "already exists", secretLeft: true},
		{name: "public exists", keyName: "k-1", existing: "public", wantErr: "already exists"},
		{name: "bad name", keyName: "has:colon", wantErr: "':'"},
		{name: "empty name", keyName: "", wantErr: "empty key name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			sec, pub := filepath.Join(dir, "secret"), filepath.Join(dir, "public")
			if tt.existing != "" {
				if err := os.WriteFile(filepath.Join(dir, tt.existing), []byte("keep me"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			_, err := Generate(tt.keyName, sec, pub)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Generate error = %v, want one containing %q", err, tt.wantErr)
			}
			if tt.existing != "" {
				checkContent(t, filepath.Join(dir, tt.existing), "keep me")
			}
			if _, err := os.Stat(sec); (err == nil) != tt.secretLeft {
				t.Errorf("secret file exists = %v, want %v", err == nil, tt.secretLeft)
			}
		})
	}
}

func TestEnsure(t *testing.T) {
	dir := t.TempDir()
	sec := filepath.Join(dir, "state", "signer", "secret-key")
	pub, created, err := Ensure(sec, "cache-1")
	if err != nil {
		t.Fatal(err)
	}
	if !created {
		t.Fatal("Ensure did not create the missing key file")
	}
	checkMode(t, sec, 0o600)
	checkMode(t, filepath.Dir(sec), 0o700|os.ModeDir)
	checkMode(t, PublicPath(sec), 0o644)
	checkContent(t, PublicPath(sec), pub.String())
	before, err := os.ReadFile(sec)
	if err != nil {
		t.Fatal(err)
	}

	// A second start finds the file and leaves it alone.
	_, created, err = Ensure(sec, "cache-1")
	if err != nil || created {
		t.Fatalf("second Ensure: created=%v, err=%v; want false, nil", created, err)
	}
	checkContent(t, sec, string(before))
	sk, err := signature.LoadSecretKeyFile(sec)
	if err != nil {
		t.Fatal(err)
	}
	if got := sk.Public().String(); got != pub.String() {
		t.Errorf("loaded key %s, want the generated %s", got, pub)
	}
}

func TestEnsureReplacesStalePublicKey(t *testing.T) {
	dir := t.TempDir()
	sec := filepath.Join(dir, "secret-key")
	if err := os.WriteFile(PublicPath(sec), []byte("stale:AAAA"), 0o600); err != nil {
		t.Fatal(err)
	}
	pub, created, err := Ensure(sec, "cache-1")
	if err != nil || !created {
		t.Fatalf("Ensure: created=%v, err=%v", created, err)
	}
	checkContent(t, PublicPath(sec), pub.String())
	checkMode(t, PublicPath(sec), 0o644)
}

func TestEnsureLeavesUnreadableFileToLoad(t *testing.T) {
	dir := t.TempDir()
	sec, _ := writeKey(t, dir, "secret-key", "cache-1", 0o644)
	_, created, err := Ensure(sec, "cache-1")
	if err != nil || created {
		t.Fatalf("Ensure: created=%v, err=%v; want false, nil", created, err)
	}
	if _, err := signature.LoadSecretKeyFile(sec); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("LoadSecretKeyFile error = %v, want the chmod hint", err)
	}
}

func checkMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode(); got != want {
		t.Errorf("%s: mode %v, want %v", path, got, want)
	}
}

func checkContent(t *testing.T, path, want string) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Errorf("%s holds %q, want %q", path, got, want)
	}
}
