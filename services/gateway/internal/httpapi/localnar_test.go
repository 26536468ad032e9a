package httpapi

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/nixcache/nixcache/nix/nar"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
)

// addHostPath puts a tree in storeDir as the host path name, and the
// index's info for it (no file: a -local-store path); it returns the hash
// part and the path's NAR.
func (e *env) addHostPath(t *testing.T, storeDir, name string, big int) (string, []byte) {
	t.Helper()
	hash := hashPart(name)
	root := filepath.Join(storeDir, hash+"-"+name)
	files := map[string][]byte{
		"bin/tool":       pattern(name+"-tool", 300),
		"lib/big.so":     pattern(name+"-big", big),
		"share/doc/note": []byte("small\n"),
	}
	for p, data := range files {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, p), data, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("bin/tool", filepath.Join(root, "link")); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := nar.DumpPath(&buf, root); err != nil {
		t.Fatal(err)
	}
	e.index.mu.Lock()
	defer e.index.mu.Unlock()
	e.index.paths[hash] = &indexv1.PathInfo{
		StorePath: "/nix/store/" + hash + "-" + name,
		NarHash:   sha256Hash(buf.Bytes()).String(),
		NarSize:   uint64(buf.Len()),
	}
	e.index.storeNars[hash] = buf.Bytes()
	return hash, buf.Bytes()
}

// TestLocalNar: with LocalStoreDir, the gateway dumps a host path's NAR
// itself, whole or a range, the same bytes as nix-store --dump (here
// nar.DumpPath, which the e2e tests hold to the real one); a pushed path of
// the nix-serve form, and a host path missing from the directory, are
// left to the index's stream; the downloads are noted for the index.
func TestLocalNar(t *testing.T) {
	storeDir := t.TempDir()
	e := newEnv(t, func(c *Config) { c.LocalStoreDir = storeDir })
	hash, want := e.addHostPath(t, storeDir, "host-tool", 300<<10)
	pushed := e.addPath("pushed", 5000)
	gone, goneNar := e.addHostPath(t, storeDir, "gone-tool", 100)
	if err := os.RemoveAll(filepath.Join(storeDir, gone+"-gone-tool")); err != nil {
		t.Fatal(err)
	}
	url := "/nar/" + hash + "-" + sha256Hash(want).NixBase32() + ".nar"
	size := len(want)

	for _, tt := range []struct {
		name, path, rng string
		code            int
		body            []byte
		streamed        bool
	}{
		{name: "whole", path: url, code: 200, body: want},
		{name: "store hash alone", path: "/nar/" + hash + ".nar", code: 200, body: want},
		{name: "range in the big file", path: url, rng: "bytes=1000-200999", code: 206, body: want[1000:201000]},
		{name: "range to the end", path: url, rng: "bytes=" + strconv.Itoa(size-300) + "-", code: 206, body: want[size-300:]},
		{name: "unsatisfiable", path: url, rng: "bytes=" + strconv.Itoa(size) + "-", code: 416},
		{name: "other NAR hash", path: "/nar/" + hash + "-" + sha256Hash([]byte("x")).NixBase32() + ".nar", code: 404},
		{name: "unknown path", path: "/nar/" + hashPart("absent") + ".nar", code: 404},
		{name: "pushed path", path: "/nar/" + pushed.hash + ".nar", code: 200, body: pushed.nar, streamed: true},
		{name: "missing from the directory", path: "/nar/" + gone + ".nar", code: 200, body: goneNar, streamed: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e.index.mu.Lock()
			e.index.getNars = nil
			e.index.mu.Unlock()
			e.h.downloads.take()
			req := request{method: "GET", path: tt.path}
			if tt.rng != "" {
				req.header = map[string]string{"Range": tt.rng}
			}
			resp := e.do(t, req)
			if resp.code != tt.code {
				t.Fatalf("status %d, want %d (%s)", resp.code, tt.code, clipBody(resp.body))
			}
			if tt.body != nil && !bytes.Equal(resp.body, tt.body) {
				t.Fatalf("body: %d bytes, want %d", len(resp.body), len(tt.body))
			}
			if tt.body != nil && resp.header.Get("Content-Length") != strconv.Itoa(len(tt.body)) {
				t.Errorf("Content-Length %q, want %d", resp.header.Get("Content-Length"), len(tt.body))
			}
			streams := e.index.calls(func(f *fakeIndex) int { return len(f.getNars) })
			if tt.code >= 400 || tt.streamed {
				if want := map[bool]int{true: 1}[tt.streamed]; streams != want {
					t.Errorf("%d GetNar streams, want %d", streams, want)
				}
				return
			}
			if streams != 0 {
				t.Errorf("%d GetNar streams; the gateway should have dumped the path", streams)
			}
			noted := e.h.downloads.take()
			wantCount := map[bool]uint64{true: 1}[tt.rng == ""]
			if len(noted) != 1 || noted[0].GetStoreHash() != hash || noted[0].GetFileHash() != "" ||
				noted[0].GetCount() != wantCount || noted[0].GetBytes() != uint64(len(tt.body)) {
				t.Errorf("downloads noted %v, want %d of %s, %d bytes", noted, wantCount, hash, len(tt.body))
			}
		})
	}
}
