package artifact

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nixcache/nixcache/nix/compression"
	"github.com/nixcache/nixcache/nix/nar"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/fault"
)

const (
	kLog  = indexv1.ArtifactKind_ARTIFACT_KIND_LOG
	kLs   = indexv1.ArtifactKind_ARTIFACT_KIND_LISTING
	kReal = indexv1.ArtifactKind_ARTIFACT_KIND_REALISATION
	kDbg  = indexv1.ArtifactKind_ARTIFACT_KIND_DEBUG_INFO

	hashPart = "0123456789abcdfghijklmnpqrsvwxyz"
	drvHash  = "sha256:" + "c89156ebdabf859f4ee70cb0c303004dccf1ae51c89156ebdabf859f4ee70cb0"
)

func TestValidateKey(t *testing.T) {
	tests := []struct {
		kind indexv1.ArtifactKind
		key  string
		ok   bool
	}{
		{kLog, hashPart + "-hello.drv", true},
		{kLog, hashPart + "-hello", false},
		{kLog, "../../etc/passwd.drv", false},
		{kLog, hashPart + "-a/b.drv", false},
		{kLog, "", false},
		{kLs, hashPart, true},
		{kLs, "../" + hashPart[3:], false},
		{kLs, strings.ToUpper(hashPart), false},
		{kReal, drvHash + "!out", true},
		{kReal, drvHash + "!dev.x-1", true},
		{kReal, drvHash, false},
		{kReal, drvHash + "!", false},
		{kReal, drvHash + "!a/b", false},
		{kReal, drvHash + "!..", false},
		// The id with ",bzip2" must fit NAME_MAX (255): outputs up to 177.
		{kReal, drvHash + "!" + strings.Repeat("o", 177), true},
		{kReal, drvHash + "!" + strings.Repeat("o", 178), false},
		{kReal, drvHash + "!" + strings.Repeat("o", 211), false},
		{kReal, "sha1:abc!out", false},
		{kReal, strings.ToUpper(drvHash) + "!out", false},
		{kDbg, "c89156ebdabf859f4ee70cb0c303004dccf1ae51", true},
		{kDbg, "c", false},
		{kDbg, "C8", false},
		{kDbg, "../x", false},
		{kDbg, strings.Repeat("ab", 65), false},
		{indexv1.ArtifactKind_ARTIFACT_KIND_UNSPECIFIED, hashPart, false},
	}
	for _, tt := range tests {
		err := ValidateKey(tt.kind, tt.key)
		if (err == nil) != tt.ok || (err != nil && !errors.Is(err, fault.ErrInvalid)) {
			t.Errorf("ValidateKey(%v, %q) = %v, want ok=%v (invalid class)", tt.kind, tt.key, err, tt.ok)
		}
	}
}

func TestValidateContent(t *testing.T) {
	id := drvHash + "!out"
	tests := []struct {
		name string
		kind indexv1.ArtifactKind
		data string
		ok   bool
	}{
		{"listing", kLs, `{"version":1,"root":{"type":"directory","entries":{"f":{"type":"regular","size":3,"narOffset":232},"l":{"type":"symlink","target":"f"},"e":{"type":"directory","entries":{}}}}}`, true},
		{"listing v2", kLs, `{"version":2,"root":{"type":"regular","size":1}}`, false},
		{"listing no root", kLs, `{"version":1}`, false},
		{"listing regular without size", kLs, `{"version":1,"root":{"type":"regular"}}`, false},
		{"listing bad type", kLs, `{"version":1,"root":{"type":"fifo"}}`, false},
		{"listing bad name", kLs, `{"version":1,"root":{"type":"directory","entries":{"..":{"type":"regular","size":1}}}}`, false},
		{"listing null entry", kLs, `{"version":1,"root":{"type":"directory","entries":{"a":null}}}`, false},
		{"listing trailing", kLs, `{"version":1,"root":{"type":"regular","size":1}} {}`, false},
		{"listing not json", kLs, `<html>`, false},
		{"realisation", kReal, `{"id":"` + id + `","outPath":"` + hashPart + `-x","signatures":[],"dependentRealisations":{}}`, true},
		{"realisation other id", kReal, `{"id":"` + drvHash + `!dev","outPath":"` + hashPart + `-x","signatures":[]}`, false},
		{"realisation bad outPath", kReal, `{"id":"` + id + `","outPath":"../x"}`, false},
		{"realisation bad dependency", kReal, `{"id":"` + id + `","outPath":"` + hashPart + `-x","dependentRealisations":{"x":"y"}}`, false},
		{"debuginfo", kDbg, `{"archive":"../nar/abc.nar.xz","member":"lib/debug/.build-id/c8/9156.debug"}`, true},
		{"debuginfo elsewhere", kDbg, `{"archive":"../../etc/passwd","member":"x"}`, false},
		{"debuginfo member escapes", kDbg, `{"archive":"../nar/a.nar","member":"a/../../x"}`, false},
	}
	for _, tt := range tests {
		err := ValidateContent(tt.kind, id, []byte(tt.data))
		if (err == nil) != tt.ok {
			t.Errorf("%s: ValidateContent = %v, want ok=%v", tt.name, err, tt.ok)
		}
	}
}

func TestStorePutOpen(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	drv := hashPart + "-hello.drv"
	if _, err := s.Open(kLog, drv); !errors.Is(err, fault.ErrNotFound) {
		t.Fatalf("Open before Put: %v, want not found", err)
	}
	var xzLog bytes.Buffer
	w, err := compression.NewWriter("xz", &xzLog)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(w, "xz log")
	w.Close()
	if _, err := s.Put(kLog, drv, "xz", &xzLog); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(kLog, drv, "", strings.NewReader("plain log")); err != nil {
		t.Fatal(err)
	}
	f, err := s.Open(kLog, drv)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := io.ReadAll(f)
	f.Close()
	if string(data) != "plain log" || f.Encoding != "none" || f.Size != 9 {
		t.Errorf("Open after two Puts: %q %s %d, want the last upload", data, f.Encoding, f.Size)
	}
	for _, tt := range []struct {
		name string
		kind indexv1.ArtifactKind
		key  string
		enc  string
		data string
	}{
		{"compressed listing", kLs, hashPart, "xz", `{}`},
		{"unknown encoding", kLog, drv, "gzip", "x"},
		{"invalid xz log", kLog, hashPart + "-other.drv", "xz", "not xz"},
		{"invalid bzip2 log", kLog, hashPart + "-other.drv", "bzip2", "BZh-ish"},
		{"bad key", kLog, "../x.drv", "", "x"},
		{"too large", kReal, drvHash + "!out", "", strings.Repeat(" ", MaxRealisationSize+1)},
		{"bad listing", kLs, hashPart, "", `{"version":1}`},
	} {
		if _, err := s.Put(tt.kind, tt.key, tt.enc, strings.NewReader(tt.data)); !errors.Is(err, fault.ErrInvalid) {
			t.Errorf("%s: Put = %v, want invalid", tt.name, err)
		}
	}
	if _, err := s.Open(kLs, hashPart); !errors.Is(err, fault.ErrNotFound) {
		t.Errorf("a refused listing was stored: %v", err)
	}
	if _, err := s.Open(kLog, hashPart+"-other.drv"); !errors.Is(err, fault.ErrNotFound) {
		t.Errorf("a refused log was stored: %v", err)
	}
}

// TestOpenClearsLeftovers: an upload a killed run left in tmp/ is removed
// at the next Open, and stored artifacts stay (regression: tmp/ was never
// emptied, so every killed upload left its file there for good).
func TestOpenClearsLeftovers(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	drv := hashPart + "-hello.drv"
	if _, err := s.Put(kLog, drv, "", strings.NewReader("kept log")); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(dir, "artifacts", "tmp")
	for _, name := range []string{"put-1", "put-2"} {
		if err := os.WriteFile(filepath.Join(tmp, name), []byte("half an upload"), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	s, err = Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if n := s.LeftoverUploads(); n != 2 {
		t.Errorf("LeftoverUploads = %d, want 2", n)
	}
	if left, err := os.ReadDir(tmp); err != nil || len(left) != 0 {
		t.Errorf("tmp/ after Open: %v entries (%v), want none", len(left), err)
	}
	f, err := s.Open(kLog, drv)
	if err != nil {
		t.Fatalf("stored log after Open: %v", err)
	}
	data, _ := io.ReadAll(f)
	f.Close()
	if string(data) != "kept log" {
		t.Errorf("stored log after Open: %q", data)
	}
	if _, err := s.Put(kLog, drv, "", strings.NewReader("new log")); err != nil {
		t.Errorf("Put after Open: %v", err)
	}
}

func TestMakeListing(t *testing.T) {
	var buf bytes.Buffer
	w := nar.NewWriter(&buf)
	for _, h := range []nar.Header{
		{Path: "/", Type: nar.TypeDirectory},
		{Path: "/empty", Type: nar.TypeDirectory},
		{Path: "/file", Type: nar.TypeRegular, Size: 3},
		{Path: "/link", Type: nar.TypeSymlink, LinkTarget: "file"},
		{Path: "/run", Type: nar.TypeRegular, Executable: true},
	} {
		if err := w.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if h.Path == "/file" {
			w.Write([]byte("hi\n"))
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	got, err := MakeListing(&buf)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"version":1,"root":{"type":"directory","entries":{"empty":{"type":"directory","entries":{}},"file":{"type":"regular","size":3},"link":{"type":"symlink","target":"file"},"run":{"type":"regular","size":0,"executable":true}}}}`
	if string(got) != want {
		t.Errorf("MakeListing:\n got %s\nwant %s", got, want)
	}
	if err := ValidateListing(got); err != nil {
		t.Errorf("the listing made does not validate: %v", err)
	}
	if _, err := MakeListing(strings.NewReader("not a NAR")); err == nil {
		t.Error("MakeListing of garbage succeeded")
	}
}
