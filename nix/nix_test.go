package nix_test

import (
	"bytes"
	"crypto/sha256"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nixcache/nixcache/nix/compression"
	"github.com/nixcache/nixcache/nix/nar"
	"github.com/nixcache/nixcache/nix/narinfo"
	"github.com/nixcache/nixcache/nix/nixhash"
	"github.com/nixcache/nixcache/nix/nixtest"
	"github.com/nixcache/nixcache/nix/signature"
	"github.com/nixcache/nixcache/nix/storepath"
)

// TestNixSubstitutesFromOurCache writes a binary cache with this module
// alone (DumpPath, the compression writers, narinfo.String, signatures) for
// a closure built by Nix, then has the real Nix copy the closure from it
// into an empty store, checking our signatures with our public key.
func TestNixSubstitutesFromOurCache(t *testing.T) {
	src := nixtest.NewStore(t)
	top := src.BuildSample(t)
	closure := src.Closure(t, top)
	key, err := signature.Generate("nixcache-e2e-1")
	if err != nil {
		t.Fatal(err)
	}

	for _, comp := range []string{compression.XZ, compression.Zstd, compression.None} {
		t.Run(comp, func(t *testing.T) {
			cache := t.TempDir()
			os.Mkdir(filepath.Join(cache, "nar"), 0o755)
			os.WriteFile(filepath.Join(cache, "nix-cache-info"), []byte("StoreDir: /nix/store\n"), 0o644)
			for _, p := range closure {
				writeCacheEntry(t, src, cache, comp, key, p)
			}

			dst := nixtest.NewStore(t)
			from := "file://" + cache
			nixtest.Run(t, "nix", "copy", "--from", from, "--to", dst.URI(),
				"--option", "trusted-public-keys", key.Public().String(), top)
			for _, p := range closure {
				if !bytes.Equal(nixtest.Dump(t, dst.Physical(p)), nixtest.Dump(t, src.Physical(p))) {
					t.Errorf("%s: the copy differs from the original", p)
				}
			}
			nixtest.Run(t, "nix", "store", "verify", "--store", dst.URI(), "--trusted-public-keys", key.Public().String(), "--recursive", top)

			// Nix must refuse the cache when it does not trust our key, or
			// the copy above proves nothing about our signatures.
			other, _ := signature.Generate("nixcache-e2e-1")
			dst2 := nixtest.NewStore(t)
			if _, err := nixtest.Try(t, nil, "nix", "copy", "--from", from, "--to", dst2.URI(),
				"--option", "trusted-public-keys", other.Public().String(), top); err == nil {
				t.Fatal("nix copied from our cache with an untrusted key")
			}
		})
	}
}

// writeCacheEntry writes the NAR and narinfo of store path p.
func writeCacheEntry(t *testing.T, src *nixtest.Store, cache, comp string, key signature.SecretKey, p string) {
	t.Helper()
	ext, err := compression.Extension(comp)
	if err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(cache, "nar", "tmp")
	f, err := os.Create(tmp)
	if err != nil {
		t.Fatal(err)
	}
	fileHash, narHash := sha256.New(), sha256.New()
	var fileSize, narSize counter
	cw, err := compression.NewWriter(comp, io.MultiWriter(f, fileHash, &fileSize))
	if err != nil {
		t.Fatal(err)
	}
	if err := nar.DumpPath(io.MultiWriter(cw, narHash, &narSize), src.Physical(p)); err != nil {
		t.Fatal(err)
	}
	if err := cw.Close(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	fh := nixhash.FromHasher(nixhash.SHA256, fileHash)
	url := "nar/" + fh.NixBase32() + ".nar" + ext
	if err := os.Rename(tmp, filepath.Join(cache, url)); err != nil {
		t.Fatal(err)
	}

	sp, err := storepath.Parse(nixtest.StoreDir, p)
	if err != nil {
		t.Fatal(err)
	}
	info := &narinfo.NarInfo{
		StorePath:   p,
		URL:         url,
		Compression: comp,
		FileHash:    fh,
		FileSize:    uint64(fileSize),
		NarHash:     nixhash.FromHasher(nixhash.SHA256, narHash),
		NarSize:     uint64(narSize),
		References:  []string{},
	}
	for _, ref := range strings.Fields(nixtest.Run(t, "nix-store", "--store", src.Root, "--query", "--references", p)) {
		info.References = append(info.References, filepath.Base(ref))
	}
	if d := strings.TrimSpace(nixtest.Run(t, "nix-store", "--store", src.Root, "--query", "--deriver", p)); d != "unknown-deriver" {
		info.Deriver = filepath.Base(d)
	}
	fp, err := info.Fingerprint(nixtest.StoreDir)
	if err != nil {
		t.Fatal(err)
	}
	info.Sigs = []string{key.Sign(fp)}
	if err := os.WriteFile(filepath.Join(cache, sp.HashPart+".narinfo"), []byte(info.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

type counter int64

func (c *counter) Write(p []byte) (int, error) {
	*c += counter(len(p))
	return len(p), nil
}
