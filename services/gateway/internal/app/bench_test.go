package app

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"testing"
	"time"
)

// The gateway's per-request cost on the reads that need no upstream call:
// /nix-cache-info, and a narinfo served from the gateway's cache. Run with
//
//	go test -run '^$' -bench . -benchmem ./internal/app/
//
// (add -cpuprofile/-memprofile to see where it goes). The Handler
// benchmarks call the whole handler chain (metrics, ops routes, request
// id, access log, auth, routing, the answer) with a minimal
// ResponseWriter; the Server ones go through net/http on loopback with one
// keep-alive client, as the shootout's narinfo pass does.

// benchHandler is the gateway's handler as Run builds it, over an index
// that knows knownHash, logging JSON at info as deployed.
func benchHandler(b *testing.B) http.Handler {
	b.Helper()
	indexAddr, _ := upstream(b)
	o := options(b)
	o.IndexAddr = indexAddr
	o.NarinfoCacheTTL = time.Hour // the narinfo comes from the cache after the first request
	o.Log = slog.New(slog.NewJSONHandler(io.Discard, nil))
	h, closeConns, err := newHandler(context.Background(), o, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(closeConns)
	return h
}

// discardWriter is the least a ResponseWriter can be: a header map, reset
// for each request as net/http's is, and a body that goes nowhere.
type discardWriter struct {
	header http.Header
	code   int
	n      int
}

func (w *discardWriter) Header() http.Header { return w.header }
func (w *discardWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
}

// WriteString is net/http's: a string body is not copied.
func (w *discardWriter) WriteString(s string) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	w.n += len(s)
	return len(s), nil
}

func (w *discardWriter) Write(p []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	w.n += len(p)
	return len(p), nil
}

func benchmarkHandler(b *testing.B, path string) {
	h := benchHandler(b)
	req, err := http.NewRequest(http.MethodGet, "http://cache"+path, nil)
	if err != nil {
		b.Fatal(err)
	}
	req.RemoteAddr = "127.0.0.1:40000"
	w := &discardWriter{header: http.Header{}}
	serve := func() {
		clear(w.header)
		w.code, w.n = 0, 0
		h.ServeHTTP(w, req)
		if w.code != http.StatusOK || w.n == 0 {
			b.Fatalf("GET %s: status %d, %d bytes", path, w.code, w.n)
		}
	}
	serve() // fills the narinfo cache
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		serve()
	}
}

func BenchmarkHandlerCacheInfo(b *testing.B) { benchmarkHandler(b, "/nix-cache-info") }
func BenchmarkHandlerNarinfo(b *testing.B)   { benchmarkHandler(b, "/"+knownHash+".narinfo") }

func benchmarkServer(b *testing.B, path string) {
	h := benchHandler(b)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: time.Minute}
	go srv.Serve(lis)
	b.Cleanup(func() { srv.Close() })
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
	b.Cleanup(client.CloseIdleConnections)
	url := "http://" + lis.Addr().String() + path
	buf := make([]byte, 4096)
	get := func() {
		resp, err := client.Get(url)
		if err != nil {
			b.Fatal(err)
		}
		n, _ := io.ReadFull(resp.Body, buf)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || n == 0 {
			b.Fatalf("GET %s: status %d, %d bytes", path, resp.StatusCode, n)
		}
	}
	get()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		get()
	}
}

func BenchmarkServerCacheInfo(b *testing.B) { benchmarkServer(b, "/nix-cache-info") }
func BenchmarkServerNarinfo(b *testing.B)   { benchmarkServer(b, "/"+knownHash+".narinfo") }
