// Package nartest makes NAR files for the index's tests: built with
// nar.Writer, compressed with compression.NewWriter, or produced by the
// real Nix (nix copy --to file://...).
package nartest

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nixcache/nixcache/nix/compression"
	"github.com/nixcache/nixcache/nix/nar"
	"github.com/nixcache/nixcache/nix/narinfo"
	"github.com/nixcache/nixcache/nix/nixhash"
)

// Hash returns the "sha256:<nix32>" hash of data.
func Hash(data []byte) nixhash.Hash {
	sum := sha256.Sum256(data)
	return nixhash.Hash{Algo: nixhash.SHA256, Digest: sum[:]}
}

// File is a regular file of a test NAR.
type File struct {
	Name     string // entry name in the root directory
	Contents []byte
}

// Build returns the NAR of a directory holding files (sorted by name by
// the caller), with a seed-dependent file added so that different seeds
// give different NARs.
func Build(t testing.TB, seed uint64, files ...File) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := nar.NewWriter(&buf)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("build NAR: %v", err)
		}
	}
	must(w.WriteHeader(&nar.Header{Path: "/", Type: nar.TypeDirectory}))
	for _, f := range files {
		must(w.WriteHeader(&nar.Header{Path: "/" + f.Name, Type: nar.TypeRegular, Size: uint64(len(f.Contents))}))
		_, err := w.Write(f.Contents)
		must(err)
	}
	seedText := fmt.Sprintf("seed %d\n", seed)
	must(w.WriteHeader(&nar.Header{Path: "/zz-seed", Type: nar.TypeRegular, Size: uint64(len(seedText))}))
	_, err := w.Write([]byte(seedText))
	must(err)
	must(w.Close())
	return buf.Bytes()
}

// Small returns a small NAR with some text and some random bytes.
func Small(t testing.TB, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	random := make([]byte, 5000)
	for i := range random {
		random[i] = byte(r.Uint32())
	}
	return Build(t, seed,
		File{Name: "hello.txt", Contents: []byte("hello, index\n")},
		File{Name: "random.bin", Contents: random},
	)
}

// Compress compresses data with the named compression.
func Compress(t testing.TB, comp string, data []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := compression.NewWriter(comp, &buf)
	if err != nil {
		t.Fatalf("compress %s: %v", comp, err)
	}
	if _, err := w.Write(data); err != nil {
		t.Fatalf("compress %s: %v", comp, err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("compress %s: %v", comp, err)
	}
	return buf.Bytes()
}

// Copied is a store path that the real Nix copied to a file:// cache.
type Copied struct {
	Info *narinfo.NarInfo
	File []byte // the NAR file as Nix wrote it
	NAR  []byte // nix-store --dump of the path
}

// NixCopy adds a new store path of random contents to the local Nix store
// and copies it with `nix copy --to file://DIR?compression=comp`. It fails
// the test when Nix is not usable here: CI installs it and runs as root.
func NixCopy(t testing.TB, comp string) Copied {
	t.Helper()
	if _, err := exec.LookPath("nix"); err != nil {
		t.Fatal("nix is not installed (scripts/tools.sh installs it)")
	}
	if os.Geteuid() != 0 {
		t.Fatal("needs root to add to the Nix store without a daemon")
	}
	env := append(os.Environ(), "NIX_CONFIG=experimental-features = nix-command\nbuild-users-group =\nsubstituters =")
	run := func(name string, args ...string) []byte {
		t.Helper()
		cmd := exec.Command(name, args...)
		cmd.Env = env
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, stderr.String())
		}
		return out
	}

	src := filepath.Join(t.TempDir(), "nixcache-index-test")
	if err := os.MkdirAll(filepath.Join(src, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	random := make([]byte, 20000)
	for i := range random {
		random[i] = byte(rand.Uint32())
	}
	if err := os.WriteFile(filepath.Join(src, "sub", "random.bin"), random, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "run.sh"), []byte("#!/bin/sh\necho hi\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	storePath := strings.TrimSpace(string(run("nix-store", "--add", src)))
	cache := t.TempDir()
	run("nix", "copy", "--to", "file://"+cache+"?compression="+comp, storePath)

	hashPart := strings.TrimPrefix(storePath, "/nix/store/")[:32]
	f, err := os.Open(filepath.Join(cache, hashPart+".narinfo"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	info, err := narinfo.Parse(bufio.NewReader(f), "/nix/store")
	if err != nil {
		t.Fatalf("parse the narinfo nix wrote: %v", err)
	}
	file, err := os.ReadFile(filepath.Join(cache, info.URL))
	if err != nil {
		t.Fatal(err)
	}
	return Copied{Info: info, File: file, NAR: run("nix-store", "--dump", storePath)}
}

// FailingReader reads data[:n], then fails with err.
func FailingReader(data []byte, n int, err error) io.Reader {
	return io.MultiReader(bytes.NewReader(data[:n]), errReader{err})
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }
