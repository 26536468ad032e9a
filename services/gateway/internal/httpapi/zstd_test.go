package httpapi

import (
	"bytes"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
)

func TestAcceptsZstd(t *testing.T) {
	tests := []struct {
		header []string
		want   bool
	}{
		{nil, false},
		{[]string{""}, false},
		{[]string{"gzip, deflate, br"}, false},
		{[]string{"deflate, gzip, br, zstd"}, true}, // curl --compressed
		{[]string{"ZSTD"}, true},
		{[]string{"gzip", "zstd;q=0.5"}, true},
		{[]string{"zstd;q=0"}, false},
		{[]string{"zstd; q=0.000"}, false},
		{[]string{"zstdx, xzstd"}, false},
		{[]string{"*"}, false}, // only an explicit zstd
	}
	for _, tt := range tests {
		h := http.Header{}
		for _, v := range tt.header {
			h.Add("Accept-Encoding", v)
		}
		if got := acceptsZstd(h); got != tt.want {
			t.Errorf("acceptsZstd(%q) = %v, want %v", tt.header, got, tt.want)
		}
	}
}

// TestGetNarZstd: with ZstdLocal, an uncompressed NAR is sent compressed
// to a client that accepts zstd, whole whatever the Range; stored files
// keep their own compression; without ZstdLocal nothing changes.
func TestGetNarZstd(t *testing.T) {
	on := newEnv(t, func(c *Config) { c.ZstdLocal = true })
	off := newEnv(t)
	p := on.addPath("hello", 5000)
	off.addPath("hello", 5000)
	big := on.addPath("big", 3*1024*1024+17)
	serveURL := "/nar/" + p.hash + "-" + sha256Hash(p.nar).NixBase32() + ".nar"
	fileURL := "/nar/" + p.fileHash.NixBase32() + ".nar.xz"
	dec, err := zstd.NewReader(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()

	tests := []struct {
		name     string
		e        *env
		path     string
		header   map[string]string
		zstd     bool
		want     []byte
		code     int
		wantVary bool
	}{
		{"zstd", on, serveURL, map[string]string{"Accept-Encoding": "gzip, zstd"}, true, p.nar, 200, true},
		{"zstd, several chunks", on, "/nar/" + big.hash + ".nar", map[string]string{"Accept-Encoding": "zstd"}, true, big.nar, 200, true},
		{"zstd ignores Range", on, serveURL, map[string]string{"Accept-Encoding": "zstd", "Range": "bytes=10-19"}, true, p.nar, 200, true},
		{"client without zstd", on, serveURL, map[string]string{"Accept-Encoding": "gzip"}, false, p.nar, 200, true},
		{"client without zstd, range", on, serveURL, map[string]string{"Range": "bytes=10-19"}, false, p.nar[10:20], 206, true},
		{"compressed file", on, fileURL, map[string]string{"Accept-Encoding": "zstd"}, false, p.file, 200, false},
		{"off", off, serveURL, map[string]string{"Accept-Encoding": "zstd"}, false, p.nar, 200, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := tt.e.do(t, request{method: "GET", path: tt.path, header: tt.header})
			if resp.code != tt.code {
				t.Fatalf("status %d, want %d: %s", resp.code, tt.code, clipBody(resp.body))
			}
			body := resp.body
			if tt.zstd {
				if got := resp.header.Get("Content-Encoding"); got != "zstd" {
					t.Errorf("Content-Encoding %q, want zstd", got)
				}
				for _, h := range []string{"Content-Length", "Accept-Ranges", "Content-Range"} {
					if v := resp.header.Get(h); v != "" {
						t.Errorf("%s %q on a zstd answer", h, v)
					}
				}
				if body, err = dec.DecodeAll(resp.body, nil); err != nil {
					t.Fatalf("decode zstd body: %v", err)
				}
			} else if got := resp.header.Get("Content-Encoding"); got != "" {
				t.Errorf("Content-Encoding %q, want none", got)
			}
			if !bytes.Equal(body, tt.want) {
				t.Errorf("body: %d bytes, want %d", len(body), len(tt.want))
			}
			if got := resp.header.Get("Vary") == "Accept-Encoding"; got != tt.wantVary {
				t.Errorf("Vary %q, want Accept-Encoding: %v", resp.header.Get("Vary"), tt.wantVary)
			}
		})
	}
}

// TestGetNarZstdCut: a NAR stream cut short aborts the zstd answer: the
// client sees an error, not a complete-looking body.
func TestGetNarZstdCut(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.ZstdLocal = true })
	p := e.addPath("cut", 3*1024*1024)
	e.index.mu.Lock()
	e.index.cutAfter = 1 << 20
	e.index.mu.Unlock()
	req, err := http.NewRequest("GET", e.srv.URL+"/nar/"+p.hash+".nar", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept-Encoding", "zstd")
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Encoding") != "zstd" {
		t.Fatalf("status %d, Content-Encoding %q", resp.StatusCode, resp.Header.Get("Content-Encoding"))
	}
	if _, err := io.ReadAll(resp.Body); err == nil {
		t.Errorf("reading a cut zstd answer succeeded; want an error")
	}
	if !strings.Contains(e.logs.String(), "NAR stream cut") {
		t.Errorf("the cut is not logged")
	}
}
