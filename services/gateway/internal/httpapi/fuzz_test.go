package httpapi

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
)

// FuzzRoute feeds arbitrary methods, request targets and small bodies to the
// gateway's router over fake upstreams. Whatever the client sends, the
// gateway must not panic and must not blame itself: the only 5xx allowed
// are 501 (a PUT of something nixcache does not store) and 503.
func FuzzRoute(f *testing.F) {
	e := newEnv(f)
	p := e.addPath("hello-2.12", 3000)
	h := e.srv.Config.Handler
	for _, s := range []struct {
		method, target string
		body           string
		push           bool
	}{
		{"GET", "/", "", false},
		{"GET", "/nix-cache-info", "", false},
		{"PUT", "/nix-cache-info", "StoreDir: /nix/store\n", true},
		{"GET", "/" + p.hash + ".narinfo", "", false},
		{"HEAD", "/" + p.hash + ".narinfo", "", false},
		{"PUT", "/" + p.hash + ".narinfo", "StorePath: /nix/store/" + p.hash + "-x\nNarSize: 0\n", true},
		{"PUT", "/" + p.hash + ".narinfo", fuzzNarinfo(p, "Sig: \xff\xfe:"+strings.Repeat("A", 86)+"==\n"), true},
		{"PUT", "/" + p.hash + ".narinfo", fuzzNarinfo(p, "Compression: \xff\n"), true},
		{"PUT", "/" + p.hash + ".narinfo", fuzzNarinfo(p, "Deriver: \xc3-x.drv\n"), true},
		{"GET", "/" + p.info.Url, "", false},
		{"GET", "/nar/" + p.hash + ".nar", "", false},
		{"PUT", "/nar/" + p.fileHash.NixBase32() + ".nar.xz", "not xz", true},
		{"PUT", "/nar/" + p.fileHash.NixBase32() + ".nar", "\r\x00\x00\x00\x00\x00\x00\x00nix-archive-1\x00\x00\x00\xff\xfe", true},
		{"PUT", "/nar/\xff\xfe.nar", "x", true},
		{"GET", "/nar/../" + p.hash + ".narinfo", "", false},
		{"GET", "/nar/%2e%2e/%2e%2e/etc/passwd", "", false},
		{"GET", "/nar/%252e%252e/x.nar", "", false},
		{"GET", "/nar/x%00.nar", "", false},
		{"GET", "/log/" + p.hash + "-hello-2.12.drv", "", false},
		{"PUT", "/log/..%2f..%2fx.drv", "log", true},
		{"GET", "/" + p.hash + ".ls", "", false},
		{"PUT", "/" + p.hash + ".ls", "{}", true},
		{"GET", "/realisations/sha256:" + strings.Repeat("0", 64) + "!out.doi", "", false},
		{"PUT", "/realisations/x!out.doi", "{", true},
		{"GET", "/debuginfo/0123456789abcdef0123456789abcdef01234567", "", false},
		{"GET", "/api/v1/paths", "", true},
		{"DELETE", "/api/v1/paths/" + p.hash, "", true},
		{"POST", "/\\..\\x", "", false},
		{"PUT", "//etc/passwd", "x", true},
		{"OPTIONS", "*", "", false},
		{"GET", "/" + strings.Repeat("a", 32) + ".narinfo?x=1", "", false},
	} {
		f.Add(s.method, s.target, []byte(s.body), s.push)
	}
	f.Fuzz(func(t *testing.T, method, target string, body []byte, push bool) {
		if !validMethod(method) || len(body) > 4096 {
			return
		}
		// What net/http's server accepts as a request target.
		u, err := url.ParseRequestURI(target)
		if err != nil {
			return
		}
		r := &http.Request{
			Method:        method,
			URL:           u,
			RequestURI:    target,
			Proto:         "HTTP/1.1",
			ProtoMajor:    1,
			ProtoMinor:    1,
			Header:        http.Header{},
			Host:          "cache.example",
			RemoteAddr:    "192.0.2.1:1234",
			Body:          http.NoBody,
			ContentLength: int64(len(body)),
		}
		if len(body) > 0 {
			r.Body = httpBody(body)
		}
		if push {
			r.Header.Set("Authorization", "Bearer "+pushToken)
		}
		r = r.WithContext(t.Context())
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if c := w.Code; c >= 500 && c != http.StatusNotImplemented && c != http.StatusServiceUnavailable {
			t.Fatalf("%s %q: %d %s", method, target, c, w.Body.String())
		}
	})
}

// fuzzNarinfo is a narinfo for p with extra lines.
func fuzzNarinfo(p testPath, extra string) string {
	return "StorePath: " + p.info.GetStorePath() + "\nURL: " + p.info.GetUrl() + "\nCompression: xz\nFileHash: " + p.fileHash.String() +
		"\nFileSize: " + strconv.Itoa(len(p.file)) + "\nNarHash: " + p.info.GetNarHash() + "\nNarSize: " + strconv.Itoa(len(p.nar)) +
		"\nReferences: \n" + extra
}

// validMethod reports whether m is an HTTP token, as net/http requires.
func validMethod(m string) bool {
	if m == "" {
		return false
	}
	for _, c := range []byte(m) {
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`()<>@,;:\"/[]?={}`, c) >= 0 {
			return false
		}
	}
	return true
}

type bodyReader struct{ *bytes.Reader }

func (bodyReader) Close() error { return nil }

func httpBody(b []byte) bodyReader { return bodyReader{bytes.NewReader(b)} }
