package httpapi

import (
	"bytes"
	"compress/gzip"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/andybalholm/brotli"

	"github.com/nixcache/nixcache/nix/compression"
	"github.com/nixcache/nixcache/nix/narinfo"
	"github.com/nixcache/nixcache/nix/nixhash"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"google.golang.org/protobuf/proto"
)

func TestGetNarinfo(t *testing.T) {
	e := newEnv(t)
	p := e.addPath("hello-2.12", 5000)
	tests := []struct {
		name string
		req  request
		code int
		body string // substring
	}{
		{"get", request{method: "GET", path: "/" + p.hash + ".narinfo"}, 200, "StorePath: " + p.info.StorePath},
		{"head", request{method: "HEAD", path: "/" + p.hash + ".narinfo"}, 200, ""},
		{"absent", request{method: "GET", path: "/" + hashPart("absent") + ".narinfo"}, 404, ""},
		{"absent head", request{method: "HEAD", path: "/" + hashPart("absent") + ".narinfo"}, 404, ""},
		{"hash too short", request{method: "GET", path: "/abc.narinfo"}, 400, "hash part"},
		{"hash not nix32", request{method: "GET", path: "/" + strings.Repeat("e", 32) + ".narinfo"}, 400, "nix32"},
		{"public reads ignore a wrong token", request{method: "GET", path: "/" + p.hash + ".narinfo", bearer: "wrong"}, 200, "StorePath: "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := e.do(t, tt.req)
			if resp.code != tt.code {
				t.Fatalf("status %d, want %d (body %q)", resp.code, tt.code, resp.body)
			}
			if !strings.Contains(string(resp.body), tt.body) {
				t.Errorf("body %q does not contain %q", resp.body, tt.body)
			}
			if tt.code == 200 {
				if ct := resp.header.Get("Content-Type"); ct != "text/x-nix-narinfo" {
					t.Errorf("Content-Type %q", ct)
				}
				if resp.header.Get("Content-Length") == "" {
					t.Error("no Content-Length")
				}
			}
		})
	}
}

// TestNarinfoRendering parses the served narinfo back as Nix would.
func TestNarinfoRendering(t *testing.T) {
	e := newEnv(t)
	p := e.addPath("hello-2.12", 5000)
	p.info.Ca = "fixed:r:sha256:" + sha256Hash([]byte("ca")).NixBase32()
	resp := e.do(t, request{method: "GET", path: "/" + p.hash + ".narinfo"})
	if resp.code != 200 {
		t.Fatalf("status %d: %s", resp.code, resp.body)
	}
	if got := resp.header.Get("Content-Length"); got != strconv.Itoa(len(resp.body)) {
		t.Errorf("Content-Length %s for %d bytes", got, len(resp.body))
	}
	ni, err := narinfo.Parse(bytes.NewReader(resp.body), "/nix/store")
	if err != nil {
		t.Fatalf("parse served narinfo: %v\n%s", err, resp.body)
	}
	want := &narinfo.NarInfo{
		StorePath:   p.info.StorePath,
		URL:         p.info.Url,
		Compression: "xz",
		FileHash:    p.fileHash,
		FileSize:    uint64(len(p.file)),
		NarHash:     sha256Hash(p.nar),
		NarSize:     uint64(len(p.nar)),
		References:  p.info.References,
		Deriver:     p.info.Deriver,
		Sigs:        p.info.Signatures,
		CA:          p.info.Ca,
	}
	if ni.String() != want.String() {
		t.Errorf("served narinfo:\n%s\nwant:\n%s", ni, want)
	}
	if !ni.FileHash.Equal(want.FileHash) || !ni.NarHash.Equal(want.NarHash) || !slices.Equal(ni.References, want.References) ||
		!slices.Equal(ni.Sigs, want.Sigs) || ni.CA != want.CA || ni.Deriver != want.Deriver || ni.URL != want.URL {
		t.Errorf("parsed back %+v, want %+v", ni, want)
	}
}

func TestNarinfoOfLocalPath(t *testing.T) {
	// A path the index serves from a local store has no file and maybe no
	// URL: it is served uncompressed, the nix-serve way.
	e := newEnv(t)
	p := e.addPath("local-1.0", 100)
	p.info.File = nil
	p.info.Url = ""
	resp := e.do(t, request{method: "GET", path: "/" + p.hash + ".narinfo"})
	if resp.code != 200 {
		t.Fatalf("status %d: %s", resp.code, resp.body)
	}
	ni, err := narinfo.Parse(bytes.NewReader(resp.body), "/nix/store")
	if err != nil {
		t.Fatalf("parse served narinfo: %v\n%s", err, resp.body)
	}
	wantURL := "nar/" + p.hash + "-" + sha256Hash(p.nar).NixBase32() + ".nar"
	if ni.URL != wantURL || ni.Compression != "none" || !ni.FileHash.IsZero() {
		t.Errorf("URL %q compression %q file hash %v; want %q none and no file hash", ni.URL, ni.Compression, ni.FileHash, wantURL)
	}
	// And that URL serves the NAR.
	resp = e.do(t, request{method: "GET", path: "/" + wantURL})
	if resp.code != 200 || !bytes.Equal(resp.body, p.nar) {
		t.Errorf("GET %s: status %d, %d bytes", wantURL, resp.code, len(resp.body))
	}
}

// pushedNarinfo is a narinfo as `nix copy` uploads it.
func pushedNarinfo(hash string) *narinfo.NarInfo {
	file := pattern("pushed-file", 300)
	nar := pattern("pushed-nar", 1000)
	fh := sha256Hash(file)
	return &narinfo.NarInfo{
		StorePath:   "/nix/store/" + hash + "-pushed-1.0",
		URL:         "nar/" + fh.NixBase32() + ".nar.zst",
		Compression: "zstd",
		FileHash:    fh,
		FileSize:    uint64(len(file)),
		NarHash:     sha256Hash(nar),
		NarSize:     uint64(len(nar)),
		References:  []string{hash + "-pushed-1.0", hashPart("glibc") + "-glibc-2.40"},
		Deriver:     hashPart("pushed.drv") + "-pushed-1.0.drv",
		Sigs:        []string{"uploader-1:" + strings.Repeat("C", 86) + "=="},
	}
}

func TestPutNarinfo(t *testing.T) {
	hash := hashPart("pushed")
	ni := pushedNarinfo(hash)
	text := []byte(ni.String())
	wantInfo := &indexv1.PathInfo{
		StorePath:  ni.StorePath,
		NarHash:    ni.NarHash.String(),
		NarSize:    ni.NarSize,
		References: ni.References,
		Deriver:    ni.Deriver,
		Signatures: ni.Sigs,
		Url:        ni.URL,
		File: &indexv1.NarFile{
			FileHash:    ni.FileHash.String(),
			FileSize:    ni.FileSize,
			Compression: "zstd",
		},
	}
	// A narinfo without Compression is bzip2, as for Nix; one with its
	// hashes in hex must reach the index in nix32.
	noCompression := strings.Replace(string(text), "Compression: zstd\n", "", 1)
	hexHashes := strings.Replace(string(text), ni.NarHash.String(), "sha256:"+ni.NarHash.Hex(), 1)

	tests := []struct {
		name     string
		path     string
		body     []byte
		encoding string
		code     int
		msg      string // substring of the body
		want     *indexv1.PathInfo
	}{
		{name: "plain", body: text, code: 204, want: wantInfo},
		{name: "xz", body: compress(t, "xz", text), encoding: "xz", code: 204, want: wantInfo},
		{name: "zstd", body: compress(t, "zstd", text), encoding: "zstd", code: 204, want: wantInfo},
		{name: "gzip", body: compress(t, "gzip", text), encoding: "gzip", code: 204, want: wantInfo},
		{name: "br", body: compress(t, "br", text), encoding: "br", code: 204, want: wantInfo},
		{name: "hex hashes", body: []byte(hexHashes), code: 204, want: wantInfo},
		{name: "no compression means bzip2", body: []byte(noCompression), code: 204, want: withCompression(wantInfo, "bzip2")},
		{name: "unsupported encoding", body: text, encoding: "compress", code: 415, msg: "Content-Encoding"},
		{name: "corrupt xz", body: text, encoding: "xz", code: 400, msg: "decode narinfo"},
		{name: "bad narinfo", body: []byte("StorePath: nope\n"), code: 400, msg: "bad narinfo"},
		// Not UTF-8: a protobuf string cannot carry it; the client's
		// mistake, not the gateway's.
		{name: "Sig not UTF-8", body: append(slices.Clone(text), "Sig: \xff\xfe:"+strings.Repeat("A", 86)+"==\n"...), code: 400, msg: "UTF-8"},
		{name: "Compression not UTF-8", body: []byte(strings.Replace(string(text), "Compression: zstd", "Compression: \xff", 1)), code: 400, msg: "UTF-8"},
		{name: "URL with ..", body: []byte(strings.Replace(string(text), "URL: nar/", "URL: nar/../../", 1)), code: 400, msg: "URL"},
		{name: "absolute URL", body: []byte(strings.Replace(string(text), "URL: nar/", "URL: /etc/nar/", 1)), code: 400, msg: "URL"},
		{name: "URL with a scheme", body: []byte(strings.Replace(string(text), "URL: nar/", "URL: file:///nar/", 1)), code: 400, msg: "URL"},
		{name: "URL with a backslash", body: []byte(strings.Replace(string(text), "URL: nar/", `URL: nar\..\`, 1)), code: 400, msg: "URL"},
		{name: "other hash in URL", path: "/" + hashPart("other") + ".narinfo", body: text, code: 400, msg: "hash part"},
		{name: "bad hash in URL", path: "/" + strings.Repeat("e", 32) + ".narinfo", body: text, code: 400, msg: "nix32"},
		{name: "too large", body: append(bytes.Repeat([]byte("X-Padding: 0\n"), 6000), text...), code: 413, msg: "max-narinfo-size"},
		{name: "decodes too large", body: compress(t, "zstd", append(bytes.Repeat([]byte("X-Padding: 0\n"), 6000), text...)), encoding: "zstd", code: 413, msg: "decodes to more"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			path := tt.path
			if path == "" {
				path = "/" + hash + ".narinfo"
			}
			header := map[string]string{"Content-Type": "text/x-nix-narinfo"}
			if tt.encoding != "" {
				header["Content-Encoding"] = tt.encoding
			}
			resp := e.do(t, request{method: "PUT", path: path, body: tt.body, header: header, bearer: pushToken})
			if resp.code != tt.code {
				t.Fatalf("status %d, want %d (body %q)", resp.code, tt.code, resp.body)
			}
			if !strings.Contains(string(resp.body), tt.msg) {
				t.Errorf("body %q does not contain %q", resp.body, tt.msg)
			}
			e.index.mu.Lock()
			defer e.index.mu.Unlock()
			if tt.want == nil {
				if len(e.index.putInfos) != 0 {
					t.Errorf("index got PutPathInfo %v", e.index.putInfos)
				}
				return
			}
			if len(e.index.putInfos) != 1 {
				t.Fatalf("index got %d PutPathInfo calls, want 1", len(e.index.putInfos))
			}
			if got := e.index.putInfos[0]; !proto.Equal(got, tt.want) {
				t.Errorf("PutPathInfo got\n%v\nwant\n%v", got, tt.want)
			}
		})
	}
}

func withCompression(info *indexv1.PathInfo, c string) *indexv1.PathInfo {
	out := proto.Clone(info).(*indexv1.PathInfo)
	out.File.Compression = c
	return out
}

// compress encodes data as a Content-Encoding names it.
func compress(t *testing.T, encoding string, data []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	var w interface {
		Write([]byte) (int, error)
		Close() error
	}
	switch encoding {
	case "gzip":
		w = gzip.NewWriter(&buf)
	case "br":
		w = brotli.NewWriter(&buf)
	default:
		cw, err := compression.NewWriter(encoding, &buf)
		if err != nil {
			t.Fatal(err)
		}
		w = cw
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestToPathInfoKeepsEmptyFileHash(t *testing.T) {
	ni := pushedNarinfo(hashPart("x"))
	ni.FileHash = nixhash.Hash{}
	ni.FileSize = 0
	got := toPathInfo(ni)
	if got.GetFile().GetFileHash() != "" || got.GetFile().GetFileSize() != 0 {
		t.Errorf("file %v, want no hash and size", got.GetFile())
	}
}
