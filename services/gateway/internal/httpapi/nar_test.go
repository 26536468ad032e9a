package httpapi

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nixcache/nixcache/nix/nixbase32"
	"github.com/nixcache/nixcache/platform/grpcutil"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
)

func TestGetNar(t *testing.T) {
	t.Run("streamed", func(t *testing.T) { testGetNar(t, false) })
	// With NarDir the stored files come from the directory, not GetNar;
	// the answers must be the same.
	t.Run("co-located", func(t *testing.T) { testGetNar(t, true) })
}

func testGetNar(t *testing.T, colocated bool) {
	var e *env
	if colocated {
		dir := t.TempDir()
		e = newEnv(t, func(c *Config) { c.NarDir = dir })
	} else {
		e = newEnv(t)
	}
	p := e.addPath("hello-2.12", 5000) // the file is 2501 bytes
	file, nar := p.file, p.nar
	fileURL := "/nar/" + p.fileHash.NixBase32() + ".nar.xz"
	serveURL := "/nar/" + p.hash + "-" + sha256Hash(nar).NixBase32() + ".nar"
	tests := []struct {
		name       string
		method     string
		path       string
		rng        string
		code       int
		body       []byte // nil: not checked
		length     int    // Content-Length; -1: not checked
		contRange  string
		wantOffset uint64 // of the GetNar request, when one is made
		wantLength uint64
	}{
		{name: "whole file", path: fileURL, code: 200, body: file, length: len(file)},
		{name: "head file", method: "HEAD", path: fileURL, code: 200, length: len(file)},
		{name: "range", path: fileURL, rng: "bytes=10-1009", code: 206, body: file[10:1010], length: 1000, contRange: "bytes 10-1009/2501", wantOffset: 10, wantLength: 1000},
		{name: "open range", path: fileURL, rng: "bytes=2000-", code: 206, body: file[2000:], length: 501, contRange: "bytes 2000-2500/2501", wantOffset: 2000, wantLength: 501},
		{name: "range end past the end", path: fileURL, rng: "bytes=2500-9999", code: 206, body: file[2500:], length: 1, contRange: "bytes 2500-2500/2501", wantOffset: 2500, wantLength: 1},
		{name: "suffix range", path: fileURL, rng: "bytes=-100", code: 206, body: file[2401:], length: 100, contRange: "bytes 2401-2500/2501", wantOffset: 2401, wantLength: 100},
		{name: "suffix larger than file", path: fileURL, rng: "bytes=-99999", code: 206, body: file, length: len(file), contRange: "bytes 0-2500/2501", wantLength: 2501},
		{name: "unsatisfiable", path: fileURL, rng: "bytes=2501-", code: 416, length: -1, contRange: "bytes */2501"},
		{name: "empty suffix", path: fileURL, rng: "bytes=-0", code: 416, length: -1, contRange: "bytes */2501"},
		{name: "multi-range gets everything", path: fileURL, rng: "bytes=0-1,5-6", code: 200, body: file, length: len(file)},
		{name: "other unit gets everything", path: fileURL, rng: "items=0-1", code: 200, body: file, length: len(file)},
		{name: "bad range gets everything", path: fileURL, rng: "bytes=9-2", code: 200, body: file, length: len(file)},
		{name: "head ignores range", method: "HEAD", path: fileURL, rng: "bytes=0-9", code: 200, length: len(file)},
		{name: "extension mismatch", path: "/nar/" + p.fileHash.NixBase32() + ".nar.zst", code: 404, length: -1},
		{name: "extension mismatch head", method: "HEAD", path: "/nar/" + p.fileHash.NixBase32() + ".nar", code: 404, length: -1},
		{name: "extension mismatch range", path: "/nar/" + p.fileHash.NixBase32() + ".nar.bz2", rng: "bytes=0-9", code: 404, length: -1},
		{name: "unknown file", path: "/nar/" + sha256Hash([]byte("x")).NixBase32() + ".nar.xz", code: 404, length: -1},
		{name: "unknown file head", method: "HEAD", path: "/nar/" + sha256Hash([]byte("x")).NixBase32() + ".nar.xz", code: 404, length: -1},
		{name: "nix-serve store and nar hash", path: serveURL, code: 200, body: nar, length: len(nar)},
		{name: "nix-serve store hash", path: "/nar/" + p.hash + ".nar", code: 200, body: nar, length: len(nar)},
		{name: "nix-serve head", method: "HEAD", path: serveURL, code: 200, length: len(nar)},
		{name: "nix-serve range", path: "/nar/" + p.hash + ".nar", rng: "bytes=-8", code: 206, body: nar[len(nar)-8:], length: 8, contRange: "bytes 4992-4999/5000", wantOffset: 4992, wantLength: 8},
		{name: "nix-serve wrong nar hash", path: "/nar/" + p.hash + "-" + sha256Hash([]byte("x")).NixBase32() + ".nar", code: 404, length: -1},
		{name: "nix-serve wrong nar hash head", method: "HEAD", path: "/nar/" + p.hash + "-" + sha256Hash([]byte("x")).NixBase32() + ".nar", code: 404, length: -1},
		{name: "nix-serve compressed", path: "/nar/" + p.hash + ".nar.xz", code: 400, length: -1},
		{name: "unknown store hash", path: "/nar/" + hashPart("absent") + ".nar", code: 404, length: -1},
		{name: "bad name", path: "/nar/hello.nar", code: 400, length: -1},
		{name: "bad extension", path: "/nar/" + p.fileHash.NixBase32() + ".nar.gz", code: 400, length: -1},
		{name: "not nix32", path: "/nar/" + strings.Repeat("e", 52) + ".nar", code: 400, length: -1},
		{name: "subdirectory", path: "/nar/a/" + p.fileHash.NixBase32() + ".nar.xz", code: 400, length: -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			method := tt.method
			if method == "" {
				method = "GET"
			}
			e.index.mu.Lock()
			e.index.getNars, e.index.statNars = nil, nil
			e.index.mu.Unlock()
			req := request{method: method, path: tt.path}
			if tt.rng != "" {
				req.header = map[string]string{"Range": tt.rng}
			}
			resp := e.do(t, req)
			if resp.code != tt.code {
				t.Fatalf("status %d, want %d (body %q)", resp.code, tt.code, clipBody(resp.body))
			}
			if tt.body != nil && !bytes.Equal(resp.body, tt.body) {
				t.Errorf("body: %d bytes, want %d (equal prefix: %v)", len(resp.body), len(tt.body), bytes.HasPrefix(tt.body, resp.body))
			}
			if method == "HEAD" && len(resp.body) != 0 {
				t.Errorf("HEAD answered %d bytes", len(resp.body))
			}
			if tt.length >= 0 && resp.header.Get("Content-Length") != strconv.Itoa(tt.length) {
				t.Errorf("Content-Length %q, want %d", resp.header.Get("Content-Length"), tt.length)
			}
			if got := resp.header.Get("Content-Range"); got != tt.contRange {
				t.Errorf("Content-Range %q, want %q", got, tt.contRange)
			}
			if tt.code == 200 || tt.code == 206 {
				if got := resp.header.Get("Content-Type"); got != "application/x-nix-nar" {
					t.Errorf("Content-Type %q", got)
				}
				if got := resp.header.Get("Accept-Ranges"); got != "bytes" {
					t.Errorf("Accept-Ranges %q", got)
				}
				if got := resp.header.Get("Content-Encoding"); got != "" {
					t.Errorf("Content-Encoding %q (Nix resumes only without one)", got)
				}
			}
			e.index.mu.Lock()
			reqs, stats := e.index.getNars, e.index.statNars
			e.index.mu.Unlock()
			if colocated && tt.path == fileURL && method == "GET" && (tt.code == 200 || tt.code == 206) {
				if len(reqs) != 0 {
					t.Errorf("GetNar requests %v: the file should have come from the NAR directory", reqs)
				}
				if len(stats) != 1 || stats[0].GetDownload() {
					t.Errorf("StatNar requests %v, want one, not counting a download", stats)
				}
				// The download goes into the next report to the index.
				wantCount := uint64(0)
				if tt.wantOffset == 0 {
					wantCount = 1
				}
				got := e.h.downloads.take()
				if len(got) != 1 || got[0].GetFileHash() != p.fileHash.String() || got[0].GetCount() != wantCount ||
					got[0].GetBytes() != uint64(len(tt.body)) || got[0].GetLast() == nil {
					t.Errorf("downloads noted %v, want %d of %s, %d bytes", got, wantCount, p.fileHash, len(tt.body))
				}
				return
			}
			if tt.code == 206 {
				if len(reqs) != 1 || reqs[0].GetOffset() != tt.wantOffset || reqs[0].GetLength() != tt.wantLength {
					t.Errorf("GetNar requests %v, want one for offset %d length %d", reqs, tt.wantOffset, tt.wantLength)
				}
			}
		})
	}
}

func clipBody(b []byte) string {
	if len(b) > 200 {
		return string(b[:200]) + "..."
	}
	return string(b)
}

func TestPutNar(t *testing.T) {
	body := pattern("upload", 2*grpcutil.ChunkSize+12345)
	name := sha256Hash(body).NixBase32()
	tests := []struct {
		name        string
		path        string
		putErr      error
		code        int
		msg         string
		wantHeader  [2]string // expected file hash, compression
		wantReached bool
	}{
		{name: "xz", path: "/nar/" + name + ".nar.xz", code: 204, wantHeader: [2]string{"sha256:" + name, "xz"}, wantReached: true},
		{name: "uncompressed", path: "/nar/" + name + ".nar", code: 204, wantHeader: [2]string{"sha256:" + name, "none"}, wantReached: true},
		{name: "zstd", path: "/nar/" + name + ".nar.zst", code: 204, wantHeader: [2]string{"sha256:" + name, "zstd"}, wantReached: true},
		{name: "bzip2", path: "/nar/" + name + ".nar.bz2", code: 204, wantHeader: [2]string{"sha256:" + name, "bzip2"}, wantReached: true},
		{name: "already stored", path: "/nar/" + name + ".nar.xz", putErr: status.Error(codes.AlreadyExists, "stored"), code: 204, wantHeader: [2]string{"sha256:" + name, "xz"}, wantReached: true},
		{name: "index refuses", path: "/nar/" + name + ".nar.xz", putErr: status.Error(codes.InvalidArgument, "file hash mismatch: got sha256:xyz"), code: 400, msg: "file hash mismatch", wantHeader: [2]string{"sha256:" + name, "xz"}, wantReached: true},
		{name: "store hash form", path: "/nar/" + hashPart("x") + ".nar", code: 400, msg: "upload to"},
		{name: "bad name", path: "/nar/foo.nar", code: 400, msg: "bad NAR URL"},
		{name: "bad extension", path: "/nar/" + name + ".nar.lz4", code: 400, msg: "bad NAR URL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			e.index.putErr = tt.putErr
			resp := e.do(t, request{method: "PUT", path: tt.path, body: body, bearer: pushToken,
				header: map[string]string{"Content-Type": "application/x-nix-nar"}})
			if resp.code != tt.code {
				t.Fatalf("status %d, want %d (body %q)", resp.code, tt.code, resp.body)
			}
			if !strings.Contains(string(resp.body), tt.msg) {
				t.Errorf("body %q does not contain %q", resp.body, tt.msg)
			}
			e.index.mu.Lock()
			defer e.index.mu.Unlock()
			if !tt.wantReached {
				if len(e.index.putNars) != 0 {
					t.Errorf("index got %d PutNar calls, want none", len(e.index.putNars))
				}
				return
			}
			if len(e.index.putNars) != 1 {
				t.Fatalf("index got %d PutNar calls, want 1", len(e.index.putNars))
			}
			call := e.index.putNars[0]
			if got := [2]string{call.header.GetExpectedFileHash(), call.header.GetExpectedCompression()}; got != tt.wantHeader {
				t.Errorf("header %v, want %v", got, tt.wantHeader)
			}
			if !bytes.Equal(call.data, body) {
				t.Errorf("index received %d bytes, want the %d sent", len(call.data), len(body))
			}
			for i, n := range call.chunks {
				if n > grpcutil.ChunkSize || n == 0 {
					t.Errorf("chunk %d is %d bytes (limit %d)", i, n, grpcutil.ChunkSize)
				}
			}
		})
	}
}

// TestPutNarCutShort checks that an upload the client cuts short never
// reaches the index as complete.
func TestPutNarCutShort(t *testing.T) {
	e := newEnv(t)
	body := pattern("cut", 100000)
	name := sha256Hash(body).NixBase32()
	pr, pw := io.Pipe()
	req, err := http.NewRequest("PUT", e.srv.URL+"/nar/"+name+".nar", pr)
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = int64(len(body))
	req.Header.Set("Authorization", "Bearer "+pushToken)
	go func() {
		pw.Write(body[:5000])
		pw.CloseWithError(io.ErrUnexpectedEOF)
	}()
	if resp, err := e.srv.Client().Do(req); err == nil {
		resp.Body.Close()
	}
	// The handler has finished when the server has no active
	// connections left; then the index must not have stored anything.
	e.srv.Close()
	e.index.mu.Lock()
	defer e.index.mu.Unlock()
	if len(e.index.putNars) != 0 {
		t.Errorf("index completed %d PutNar calls for a cut upload", len(e.index.putNars))
	}
}

// TestGetNarClientGone checks that a client hanging up mid-NAR cancels the
// index's stream.
func TestGetNarClientGone(t *testing.T) {
	e := newEnv(t)
	p := e.addPath("big-1.0", 100)
	e.index.stall = true
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, "GET", e.srv.URL+"/nar/"+p.fileHash.NixBase32()+".nar.xz", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || resp.ContentLength != 1<<40 {
		t.Fatalf("status %d, Content-Length %d", resp.StatusCode, resp.ContentLength)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, fakeChunk)); err != nil {
		t.Fatalf("read first chunk: %v", err)
	}
	cancel()
	resp.Body.Close()
	select {
	case <-e.index.streamDone:
	case <-time.After(10 * time.Second):
		t.Fatal("the index's GetNar stream was not canceled after the client left")
	}
}

// TestGetNarHeaderTimeout checks that a NAR stream that never starts ends
// in a 503, not a hang.
func TestGetNarHeaderTimeout(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.RequestTimeout = 200 * time.Millisecond })
	p := e.addPath("slow-1.0", 100)
	e.index.noHeader = true
	resp := e.do(t, request{method: "GET", path: "/nar/" + p.fileHash.NixBase32() + ".nar.xz"})
	if resp.code != 503 || resp.header.Get("Retry-After") == "" {
		t.Errorf("status %d, Retry-After %q; want 503 with Retry-After", resp.code, resp.header.Get("Retry-After"))
	}
}

// TestNarDirFallback checks that with NarDir the gateway serves only a
// regular file, inside the directory, of the size the index recorded, and
// otherwise streams the file from the index: what it sends is always the
// index's bytes.
func TestNarDirFallback(t *testing.T) {
	for _, tt := range []struct {
		name  string
		spoil func(t *testing.T, narDir, outside, rel string, file []byte) string // returns the relative path the index names
	}{
		{"missing", func(t *testing.T, narDir, outside, rel string, file []byte) string {
			must(t, os.Remove(filepath.Join(narDir, rel)))
			return rel
		}},
		{"truncated", func(t *testing.T, narDir, outside, rel string, file []byte) string {
			must(t, os.WriteFile(filepath.Join(narDir, rel), file[:len(file)-1], 0o644))
			return rel
		}},
		{"a directory", func(t *testing.T, narDir, outside, rel string, file []byte) string {
			must(t, os.Remove(filepath.Join(narDir, rel)))
			must(t, os.Mkdir(filepath.Join(narDir, rel), 0o755))
			return rel
		}},
		{"dot-dot", func(t *testing.T, narDir, outside, rel string, file []byte) string {
			return "../outside/evil.nar.xz"
		}},
		{"absolute", func(t *testing.T, narDir, outside, rel string, file []byte) string {
			return filepath.Join(outside, "evil.nar.xz")
		}},
		{"unclean", func(t *testing.T, narDir, outside, rel string, file []byte) string {
			return "./" + rel
		}},
		{"symlink out", func(t *testing.T, narDir, outside, rel string, file []byte) string {
			must(t, os.Remove(filepath.Join(narDir, rel)))
			must(t, os.Symlink(filepath.Join(outside, "evil.nar.xz"), filepath.Join(narDir, rel)))
			return rel
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			base := t.TempDir()
			narDir, outside := filepath.Join(base, "nars"), filepath.Join(base, "outside")
			must(t, os.Mkdir(narDir, 0o755))
			must(t, os.Mkdir(outside, 0o755))
			e := newEnv(t, func(c *Config) { c.NarDir = narDir })
			p := e.addPath("hello", 5000)
			// A file of the right size but other bytes, outside NarDir.
			evil := bytes.Repeat([]byte("E"), len(p.file))
			must(t, os.WriteFile(filepath.Join(outside, "evil.nar.xz"), evil, 0o644))
			e.index.mu.Lock()
			rel := e.index.relPaths[p.fileHash.String()]
			e.index.mu.Unlock()
			named := tt.spoil(t, narDir, outside, filepath.FromSlash(rel), p.file)
			e.index.mu.Lock()
			e.index.relPaths[p.fileHash.String()] = filepath.ToSlash(named)
			e.index.getNars = nil
			e.index.mu.Unlock()

			if streamed := getStoredNar(t, e, p); streamed != 1 {
				t.Errorf("%d GetNar calls, want the file streamed from the index once", streamed)
			}
		})
	}
}

// TestNarDirSymlinkInside: a file reached through a symbolic link that
// stays inside NarDir is still sent from the directory (os.Root follows
// it where openat2 refuses any link), not streamed from the index.
func TestNarDirSymlinkInside(t *testing.T) {
	narDir := t.TempDir()
	e := newEnv(t, func(c *Config) { c.NarDir = narDir })
	p := e.addPath("linked", 5000)
	e.index.mu.Lock()
	rel := filepath.FromSlash(e.index.relPaths[p.fileHash.String()])
	e.index.getNars = nil
	e.index.mu.Unlock()
	must(t, os.Rename(filepath.Join(narDir, rel), filepath.Join(narDir, "elsewhere.nar.xz")))
	must(t, os.Symlink("../elsewhere.nar.xz", filepath.Join(narDir, rel)))

	if streamed := getStoredNar(t, e, p); streamed != 0 {
		t.Errorf("%d GetNar calls, want the file sent from NarDir", streamed)
	}
}

// getStoredNar downloads p's file, which must come back whole, and
// returns how many GetNar calls the index has had since its count was
// reset.
func getStoredNar(t *testing.T, e *env, p testPath) (streamed int) {
	t.Helper()
	resp := e.do(t, request{method: "GET", path: "/nar/" + p.fileHash.NixBase32() + ".nar.xz"})
	if resp.code != 200 || !bytes.Equal(resp.body, p.file) {
		t.Fatalf("status %d, %d bytes (the file's: %v)", resp.code, len(resp.body), bytes.Equal(resp.body, p.file))
	}
	e.index.mu.Lock()
	defer e.index.mu.Unlock()
	return len(e.index.getNars)
}

func TestNarDirMissing(t *testing.T) {
	_, err := New(Config{
		Index: indexv1.NewIndexServiceClient(nil),
		Log:   slog.New(slog.NewTextHandler(io.Discard, nil)), MaxNarinfoSize: 1, RequestTimeout: time.Second,
		NarDir: filepath.Join(t.TempDir(), "absent"),
	})
	if err == nil || !strings.Contains(err.Error(), "NAR directory") {
		t.Fatalf("New with a missing NarDir: %v", err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// readFromWriter is a ResponseWriter whose ReadFrom (net/http's: sendfile
// for a file) must be reached through the access-log recorder.
type readFromWriter struct {
	httptest.ResponseRecorder
	readFrom int64
}

func (w *readFromWriter) ReadFrom(src io.Reader) (int64, error) {
	n, err := io.Copy(&w.ResponseRecorder, src)
	w.readFrom += n
	return n, err
}

func TestRecorderReadFrom(t *testing.T) {
	w := &readFromWriter{ResponseRecorder: *httptest.NewRecorder()}
	rec := &recorder{ResponseWriter: w}
	n, err := io.CopyN(rec, strings.NewReader(strings.Repeat("x", 5000)), 4000)
	if err != nil || n != 4000 || w.readFrom != 4000 || rec.bytes != 4000 || rec.code != http.StatusOK {
		t.Errorf("CopyN: %d, %v; ReadFrom below got %d, recorder counted %d, status %d", n, err, w.readFrom, rec.bytes, rec.code)
	}
}

// TestGetNarIndexStalls: an index that stops sending mid-NAR is cut off
// after TransferIdleTimeout (the client sees the body end short, not a
// hang), and its stream is canceled.
func TestGetNarIndexStalls(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.TransferIdleTimeout = 200 * time.Millisecond })
	p := e.addPath("stuck-1.0", 100)
	e.index.stall = true
	resp, err := e.srv.Client().Get(e.srv.URL + "/nar/" + p.fileHash.NixBase32() + ".nar.xz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	start := time.Now()
	n, err := io.Copy(io.Discard, resp.Body)
	took := time.Since(start)
	if err == nil || n != fakeChunk {
		t.Errorf("read %d bytes, err %v; want the one chunk sent and then an error", n, err)
	}
	if took > 5*time.Second {
		t.Errorf("the body ended %s after the index stalled, want about 200ms", took)
	}
	select {
	case <-e.index.streamDone:
	case <-time.After(10 * time.Second):
		t.Fatal("the stalled GetNar stream was not canceled")
	}
	if !strings.Contains(e.logs.String(), "no data from the index within 200ms") {
		t.Errorf("log does not say why the NAR was cut:\n%s", e.logs.String())
	}
}

// TestPutNarIndexStalls: an index that stops taking an upload, or takes
// it all and never answers, gets a 503 with Retry-After within the
// bounds, and its stream is canceled.
func TestPutNarIndexStalls(t *testing.T) {
	tests := []struct {
		name     string
		putStall int
		size     int
		want     string
	}{
		// Far more than the flow-control windows: Send blocks.
		{"stops reading", -1, 8 << 20, "no room to send to the index within 200ms"},
		{"never answers", 1, 1000, "no answer from the index after the upload within 300ms"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, func(c *Config) {
				c.TransferIdleTimeout = 200 * time.Millisecond
				c.RequestTimeout = 300 * time.Millisecond
			})
			e.index.putStall = tt.putStall
			body := bytes.Repeat([]byte{'n'}, tt.size)
			sum := sha256.Sum256(body)
			start := time.Now()
			resp := e.do(t, request{method: "PUT", path: "/nar/" + nixbase32.EncodeToString(sum[:]) + ".nar", body: body, bearer: pushToken})
			took := time.Since(start)
			if resp.code != 503 || resp.header.Get("Retry-After") == "" || !strings.Contains(string(resp.body), tt.want) {
				t.Errorf("status %d, Retry-After %q, body %q; want 503 with Retry-After saying %q", resp.code, resp.header.Get("Retry-After"), resp.body, tt.want)
			}
			if took > 5*time.Second {
				t.Errorf("answered after %s, want within about 300ms", took)
			}
			select {
			case <-e.index.putStallDone:
			case <-time.After(10 * time.Second):
				t.Fatal("the stalled PutNar stream was not canceled")
			}
		})
	}
}

// TestGetNarRedirect: with NarRedirect, GET of a stored file is a 307 to
// the URL the index presigns, when it makes one; HEAD, the nix-serve
// forms, and an index without presigned URLs stream as before.
func TestGetNarRedirect(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.NarRedirect = true })
	p := e.addPath("hello-2.12", 5000)
	fileURL := "/nar/" + p.fileHash.NixBase32() + ".nar.xz"
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	get := func(method, path string) *http.Response {
		t.Helper()
		req, err := http.NewRequest(method, e.srv.URL+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := noFollow.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}

	// The index keeps its files on disk: no URL, the NAR streams.
	if resp := get("GET", fileURL); resp.StatusCode != 200 {
		t.Errorf("GET without a presigned URL: %d, want 200", resp.StatusCode)
	}

	e.index.mu.Lock()
	e.index.presign = "http://bucket.example/signed?f="
	e.index.mu.Unlock()
	resp := get("GET", fileURL)
	if want := "http://bucket.example/signed?f=" + p.fileHash.String(); resp.StatusCode != http.StatusTemporaryRedirect || resp.Header.Get("Location") != want {
		t.Errorf("GET: %d to %q, want 307 to %q", resp.StatusCode, resp.Header.Get("Location"), want)
	}
	if got := resp.Header.Get("Cache-Control"); got != "no-store" {
		t.Errorf("Cache-Control of the redirect %q, want no-store", got)
	}
	if resp := get("GET", "/nar/"+p.fileHash.NixBase32()+".nar.zst"); resp.StatusCode != 404 {
		t.Errorf("GET with the wrong extension: %d, want 404", resp.StatusCode)
	}
	if resp := get("HEAD", fileURL); resp.StatusCode != 200 {
		t.Errorf("HEAD: %d, want 200", resp.StatusCode)
	}
	if resp := get("GET", "/nar/"+p.hash+".nar"); resp.StatusCode != 200 {
		t.Errorf("GET of the nix-serve form: %d, want 200", resp.StatusCode)
	}
}
