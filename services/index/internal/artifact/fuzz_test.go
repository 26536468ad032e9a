package artifact

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/fault"
)

// FuzzValidateKey checks that every key ValidateKey accepts is one plain
// file name inside the kind's directory (Store.path joins it, with ","
// and an encoding, under the data directory), and that every refusal is an
// ErrInvalid.
func FuzzValidateKey(f *testing.F) {
	for _, s := range []struct {
		kind int32
		key  string
	}{
		{1, "0123456789abcdfghijklmnpqrsvwxyz-hello-2.12.drv"},
		{1, "../0123456789abcdfghijklmnpqrsvwxyz-x.drv"},
		{1, "0123456789abcdfghijklmnpqrsvwxyz-a/../../b.drv"},
		{2, "0123456789abcdfghijklmnpqrsvwxyz"},
		{2, ".."},
		{3, "sha256:" + strings.Repeat("0a", 32) + "!out"},
		{3, "sha256:" + strings.Repeat("0a", 32) + "!.."},
		{3, "sha256:" + strings.Repeat("0a", 32) + "!a/b"},
		{3, "sha256:" + strings.Repeat("0a", 32) + "!" + strings.Repeat("o", 211)},
		{1, "0123456789abcdfghijklmnpqrsvwxyz-" + strings.Repeat("n", 207) + ".drv"},
		{4, "0123456789abcdef0123456789abcdef01234567"},
		{4, "../x"},
		{0, "x"},
		{9, "x"},
	} {
		f.Add(s.kind, s.key)
	}
	f.Fuzz(func(t *testing.T, kind int32, key string) {
		k := indexv1.ArtifactKind(kind)
		err := ValidateKey(k, key)
		if err != nil {
			if !errors.Is(err, fault.ErrInvalid) {
				t.Fatalf("ValidateKey(%v, %q): %v is not ErrInvalid", k, key, err)
			}
			return
		}
		if key == "" || key == "." || key == ".." || len(key)+len(",bzip2") > 255 ||
			strings.ContainsAny(key, "/\\\x00,") || filepath.Base(key) != key || filepath.Clean(key) != key {
			t.Fatalf("ValidateKey(%v, %q) accepted a key unsafe as a file name", k, key)
		}
		dir := filepath.Join("/data", "artifacts", dirName(k))
		if p := filepath.Join(dir, key+",zstd"); filepath.Dir(p) != dir {
			t.Fatalf("ValidateKey(%v, %q): file %s is outside %s", k, key, p, dir)
		}
	})
}
