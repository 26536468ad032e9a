package httpapi

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// stalledPut sends the headers of a PUT of path announcing 1000 bytes,
// then 10 of them, then nothing, and returns the answer and how long it
// took to come.
func stalledPut(t *testing.T, e *env, path string) (*http.Response, time.Duration) {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(e.srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	start := time.Now()
	fmt.Fprintf(conn, "PUT %s HTTP/1.1\r\nHost: cache\r\nAuthorization: Bearer %s\r\nContent-Length: 1000\r\n\r\n0123456789", path, pushToken)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("PUT %s stalled: no answer: %v", path, err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp, time.Since(start)
}

// TestUploadClientStalls: an upload whose client stops sending is cut
// after TransferIdleTimeout and answered 408 with a message, never 200,
// and the index completes nothing: NARs and side files alike.
func TestUploadClientStalls(t *testing.T) {
	hash := hashPart("stalled")
	for _, path := range []string{
		"/nar/" + sha256Hash([]byte("x")).NixBase32() + ".nar.xz",
		"/log/" + hash + "-stalled.drv",
		"/" + hash + ".ls",
	} {
		t.Run(path, func(t *testing.T) {
			e := newEnv(t, func(c *Config) { c.TransferIdleTimeout = 300 * time.Millisecond })
			resp, took := stalledPut(t, e, path)
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != http.StatusRequestTimeout || !strings.Contains(string(body), "transfer-idle-timeout") {
				t.Errorf("status %d %q, want 408 naming -transfer-idle-timeout", resp.StatusCode, body)
			}
			if took > 5*time.Second {
				t.Errorf("answered after %v, want about the idle timeout", took)
			}
			e.srv.Close() // waits for the handler
			e.index.mu.Lock()
			defer e.index.mu.Unlock()
			if len(e.index.putNars) != 0 || len(e.index.putArtifacts) != 0 {
				t.Errorf("index completed an upload the client never finished")
			}
		})
	}
}

// TestPutLog: a build log is stored decoded, whatever its encoding, so an
// invalid one is refused at upload, and its size is bounded decoded.
func TestPutLog(t *testing.T) {
	hash := hashPart("log")
	path := "/log/" + hash + "-hello.drv"
	text := []byte(strings.Repeat("building hello\n", 1000))
	tests := []struct {
		name     string
		body     []byte
		encoding string
		code     int
		msg      string
	}{
		{"plain", text, "", 204, ""},
		{"xz", compress(t, "xz", text), "xz", 204, ""},
		{"zstd", compress(t, "zstd", text), "zstd", 204, ""},
		{"gzip", compress(t, "gzip", text), "gzip", 204, ""},
		{"invalid xz", []byte("this is not xz at all"), "xz", 400, "decode"},
		{"truncated zstd", compress(t, "zstd", text)[:40], "zstd", 400, "decode"},
		{"decodes too large", compress(t, "zstd", make([]byte, artifactLimits[1]+1)), "zstd", 413, "larger than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			header := map[string]string{}
			if tt.encoding != "" {
				header["Content-Encoding"] = tt.encoding
			}
			resp := e.do(t, request{method: "PUT", path: path, body: tt.body, header: header, bearer: pushToken})
			if resp.code != tt.code || !strings.Contains(string(resp.body), tt.msg) {
				t.Fatalf("status %d %q, want %d with %q", resp.code, resp.body, tt.code, tt.msg)
			}
			e.index.mu.Lock()
			defer e.index.mu.Unlock()
			if tt.code != 204 {
				if len(e.index.putArtifacts) != 0 {
					t.Errorf("index stored a refused log")
				}
				return
			}
			if len(e.index.putArtifacts) != 1 {
				t.Fatalf("index got %d logs, want 1", len(e.index.putArtifacts))
			}
			got := e.index.putArtifacts[0]
			if enc := got.header.GetContentEncoding(); enc != "none" || string(got.data) != string(text) {
				t.Errorf("index got a log encoded %q of %d bytes, want it decoded, %d bytes", enc, len(got.data), len(text))
			}
		})
	}
}
