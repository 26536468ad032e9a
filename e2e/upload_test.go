package e2e

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nixcache/nixcache/nix/nixbase32"
)

type response struct {
	status int
	header http.Header
	body   string
}

func httpDo(t *testing.T, method, url, token string, body io.Reader, header http.Header) response {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	if token != "" {
		req.SetBasicAuth("nixcache", token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, url, err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: string(b)}
}

func sha256Nix32(b []byte) string {
	sum := sha256.Sum256(b)
	return nixbase32.EncodeToString(sum[:])
}

// upload is a hand-made push of one path, as nix copy --to sends it with
// compression=none, so that each part can be spoiled.
type upload struct {
	storePath  string
	nar        []byte // the NAR file PUT (uncompressed)
	narHash    string // claimed in the narinfo
	narSize    int
	references []string
}

func newUpload(t *testing.T, storePath string) upload {
	t.Helper()
	nar, err := exec.Command("nix-store", "--dump", storePath).Output()
	if err != nil {
		t.Fatalf("nix-store --dump %s: %v", storePath, err)
	}
	refs := strings.Fields(mustNix(t, nixConfig(), "nix-store", "--query", "--references", storePath))
	for i, r := range refs {
		refs[i] = filepath.Base(r)
	}
	return upload{storePath: storePath, nar: nar, narHash: "sha256:" + sha256Nix32(nar), narSize: len(nar), references: refs}
}

func (u upload) fileHash() string { return sha256Nix32(u.nar) }

func (u upload) narinfo() string {
	return fmt.Sprintf("StorePath: %s\nURL: nar/%s.nar\nCompression: none\nFileHash: sha256:%s\nFileSize: %d\nNarHash: %s\nNarSize: %d\nReferences: %s\n",
		u.storePath, u.fileHash(), u.fileHash(), len(u.nar), u.narHash, u.narSize, strings.Join(u.references, " "))
}

// TestBadUploadsRefused sends spoiled pushes over HTTP: each is refused with
// a 4xx that says why, and the path stays absent.
func TestBadUploadsRefused(t *testing.T) {
	c := newCluster(t)
	_, closure := buildClosure(t)
	var leaf, mid string
	for _, p := range closure {
		switch {
		case strings.Contains(p, "-leaf-"):
			leaf = p
		case strings.Contains(p, "-mid-"):
			mid = p
		}
	}
	narinfoURL := func(p string) string { return c.URL + "/" + hashPart(p) + ".narinfo" }
	putNar := func(u upload) response {
		return httpDo(t, "PUT", c.URL+"/nar/"+u.fileHash()+".nar", c.pushToken, bytes.NewReader(u.nar), nil)
	}
	putNarinfo := func(u upload, body string) response {
		return httpDo(t, "PUT", narinfoURL(u.storePath), c.pushToken, strings.NewReader(body),
			http.Header{"Content-Type": {"text/x-nix-narinfo"}})
	}

	t.Run("anonymous PUT", func(t *testing.T) {
		u := newUpload(t, leaf)
		resp := httpDo(t, "PUT", c.URL+"/nar/"+u.fileHash()+".nar", "", bytes.NewReader(u.nar), nil)
		if resp.status != http.StatusUnauthorized {
			t.Errorf("PUT nar without credentials: %d, want 401", resp.status)
		}
		if resp.header.Get("WWW-Authenticate") == "" {
			t.Error("401 without WWW-Authenticate")
		}
		resp = httpDo(t, "PUT", narinfoURL(leaf), "", strings.NewReader(u.narinfo()), nil)
		if resp.status != http.StatusUnauthorized {
			t.Errorf("PUT narinfo without credentials: %d, want 401", resp.status)
		}
	})

	t.Run("truncated NAR", func(t *testing.T) {
		u := newUpload(t, leaf)
		u.nar = u.nar[:len(u.nar)/2]
		if resp := putNar(u); resp.status != http.StatusBadRequest {
			t.Errorf("PUT truncated NAR: %d %q, want 400", resp.status, resp.body)
		}
		if st := httpStatus(t, "HEAD", c.URL+"/nar/"+u.fileHash()+".nar", "", nil); st != http.StatusNotFound {
			t.Errorf("truncated NAR is stored: HEAD %d", st)
		}
	})

	t.Run("not a NAR", func(t *testing.T) {
		u := newUpload(t, leaf)
		u.nar = []byte("this is not a nix archive at all, just text\n")
		if resp := putNar(u); resp.status != http.StatusBadRequest {
			t.Errorf("PUT garbage: %d %q, want 400", resp.status, resp.body)
		}
	})

	t.Run("NAR hash mismatch", func(t *testing.T) {
		u := newUpload(t, leaf)
		// Spoil one byte of a file's contents: still a well-formed NAR,
		// but not the one the narinfo describes.
		i := bytes.Index(u.nar, []byte("hello "))
		if i < 0 {
			t.Fatal("no 'hello' in the leaf NAR")
		}
		u.nar = bytes.Clone(u.nar)
		u.nar[i] = 'j'
		if resp := putNar(u); resp.status/100 != 2 {
			t.Fatalf("PUT well-formed NAR: %d %q", resp.status, resp.body)
		}
		resp := putNarinfo(u, u.narinfo())
		if resp.status != http.StatusBadRequest || !strings.Contains(strings.ToLower(resp.body), "narhash") {
			t.Errorf("PUT narinfo with wrong NarHash: %d %q, want 400 naming NarHash", resp.status, resp.body)
		}
	})

	t.Run("NAR size mismatch", func(t *testing.T) {
		u := newUpload(t, leaf)
		if resp := putNar(u); resp.status/100 != 2 {
			t.Fatalf("PUT NAR: %d %q", resp.status, resp.body)
		}
		u.narSize++
		if resp := putNarinfo(u, u.narinfo()); resp.status != http.StatusBadRequest {
			t.Errorf("PUT narinfo with wrong NarSize: %d %q, want 400", resp.status, resp.body)
		}
	})

	t.Run("NAR never uploaded", func(t *testing.T) {
		u := newUpload(t, leaf)
		u.nar = append(bytes.Clone(u.nar), 0) // another file hash, never PUT
		if resp := putNarinfo(u, u.narinfo()); resp.status != http.StatusBadRequest {
			t.Errorf("PUT narinfo naming a missing NAR: %d %q, want 400", resp.status, resp.body)
		}
	})

	t.Run("missing reference", func(t *testing.T) {
		u := newUpload(t, mid) // refers to leaf, which is not in the cache
		if resp := putNar(u); resp.status/100 != 2 {
			t.Fatalf("PUT NAR: %d %q", resp.status, resp.body)
		}
		resp := putNarinfo(u, u.narinfo())
		if resp.status != http.StatusBadRequest || !strings.Contains(resp.body, filepath.Base(leaf)) {
			t.Errorf("PUT narinfo with a missing reference: %d %q, want 400 naming %s", resp.status, resp.body, filepath.Base(leaf))
		}
	})

	t.Run("malformed narinfo", func(t *testing.T) {
		u := newUpload(t, leaf)
		for _, body := range []string{
			"this is not a narinfo\n",
			strings.Replace(u.narinfo(), "NarSize: ", "NarSize: x", 1),
			strings.Replace(u.narinfo(), "StorePath: /nix/store/", "StorePath: /nix/stor/", 1),
			u.narinfo() + "References: \n",
		} {
			if resp := putNarinfo(u, body); resp.status != http.StatusBadRequest {
				t.Errorf("PUT malformed narinfo: %d %q, want 400\n%s", resp.status, resp.body, body)
			}
		}
	})

	t.Run("store path differs from URL", func(t *testing.T) {
		u := newUpload(t, leaf)
		resp := httpDo(t, "PUT", narinfoURL(mid), c.pushToken, strings.NewReader(u.narinfo()), nil)
		if resp.status != http.StatusBadRequest {
			t.Errorf("PUT narinfo under another hash: %d %q, want 400", resp.status, resp.body)
		}
	})

	// Nothing of the above got published.
	for _, p := range closure {
		if st := httpStatus(t, "GET", narinfoURL(p), "", nil); st != http.StatusNotFound {
			t.Errorf("after refused uploads, GET narinfo of %s: %d, want 404", p, st)
		}
	}

	// The control: the same hand-made upload, unspoiled, is accepted and served signed.
	u := newUpload(t, leaf)
	if resp := putNar(u); resp.status/100 != 2 {
		t.Fatalf("PUT NAR: %d %q", resp.status, resp.body)
	}
	if resp := putNarinfo(u, u.narinfo()); resp.status/100 != 2 {
		t.Fatalf("PUT narinfo: %d %q", resp.status, resp.body)
	}
	resp := httpDo(t, "GET", narinfoURL(leaf), "", nil, nil)
	if resp.status != http.StatusOK || !strings.Contains(resp.body, "Sig: e2e-cache-1:") {
		t.Fatalf("GET narinfo after a good upload: %d\n%s", resp.status, resp.body)
	}
}
