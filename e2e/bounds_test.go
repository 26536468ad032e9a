package e2e

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nixcache/nixcache/nix/compression"
	"github.com/nixcache/nixcache/nix/nar"
	"github.com/nixcache/nixcache/nix/nixhash"
	"github.com/nixcache/nixcache/nix/signature"
)

// The bounds on hostile requests, against the real processes: what each
// costs the services is read from /proc.

// procMem returns VmRSS and VmHWM (the peak of VmRSS) of a process, in
// bytes, from /proc/<pid>/status.
func procMem(t *testing.T, pid int) (rss, hwm uint64) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		key, val, _ := strings.Cut(line, ":")
		f := strings.Fields(val) // "1234 kB"
		if len(f) != 2 || f[1] != "kB" {
			continue
		}
		n, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			continue
		}
		switch key {
		case "VmRSS":
			rss = n << 10
		case "VmHWM":
			hwm = n << 10
		}
	}
	if rss == 0 || hwm == 0 {
		t.Fatalf("no VmRSS or VmHWM in /proc/%d/status", pid)
	}
	return rss, hwm
}

// procCPU is the user plus system CPU time a process has used, from
// /proc/<pid>/stat.
func procCPU(t *testing.T, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// The command name may hold spaces: the fields start after the last ')'.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		t.Fatalf("bad /proc/%d/stat: %q", pid, b)
	}
	const ticks = 100 // USER_HZ
	return time.Duration(ut+st) * time.Second / ticks
}

// rawRequest is an HTTP/1.1 request written by hand on its own
// connection, so that a test can send a body slowly, partly, or far
// larger than it holds.
type rawRequest struct {
	conn net.Conn
	resp chan *http.Response
	errc chan error
}

// startRaw sends the request line and headers (each "Key: value") to addr
// and starts reading the answer.
func startRaw(t *testing.T, addr, method, path string, headers ...string) *rawRequest {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetReadDeadline(time.Now().Add(2 * time.Minute))
	head := method + " " + path + " HTTP/1.1\r\nHost: cache\r\n" + strings.Join(headers, "\r\n") + "\r\n\r\n"
	if _, err := io.WriteString(conn, head); err != nil {
		t.Fatal(err)
	}
	r := &rawRequest{conn: conn, resp: make(chan *http.Response, 1), errc: make(chan error, 1)}
	go func() {
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			r.errc <- err
			return
		}
		r.resp <- resp
	}()
	return r
}

// answer waits up to within for the answer and returns its status and
// body.
func (r *rawRequest) answer(t *testing.T, within time.Duration) (int, string, http.Header) {
	t.Helper()
	select {
	case resp := <-r.resp:
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		return resp.StatusCode, string(b), resp.Header
	case err := <-r.errc:
		t.Fatalf("no answer: %v", err)
	case <-time.After(within):
		t.Fatalf("no answer within %s", within)
	}
	return 0, "", nil
}

func basicAuth(token string) string {
	return "Authorization: Bearer " + token
}

// TestBoundsAdminBody: a 300 MB JSON body to POST /api/v1/pins, without
// a token and with the admin token, is refused (401, 413) without the
// gateway reading it: its RSS peak grows by less than 64 MiB.
func TestBoundsAdminBody(t *testing.T) {
	c := newCluster(t)
	pid := c.pid("gateway")
	before, _ := procMem(t, pid)
	const size = 300 << 20
	for _, tt := range []struct {
		name   string
		header []string
		code   int
	}{
		{"anonymous", nil, http.StatusUnauthorized},
		{"admin token", []string{basicAuth(c.adminToken)}, http.StatusRequestEntityTooLarge},
	} {
		t.Run(tt.name, func(t *testing.T) {
			req := startRaw(t, c.httpAddr, "POST", "/api/v1/pins",
				append(tt.header, "Content-Type: application/json", "Content-Length: "+strconv.Itoa(size))...)
			sent := make(chan int64, 1)
			go func() {
				// A JSON string the decoder would buffer whole.
				n, _ := io.WriteString(req.conn, `{"path": "`)
				chunk := bytes.Repeat([]byte("x"), 1<<20)
				total := int64(n)
				for total+int64(len(chunk)) <= size {
					m, err := req.conn.Write(chunk)
					total += int64(m)
					if err != nil {
						break
					}
				}
				sent <- total
			}()
			code, body, _ := req.answer(t, time.Minute)
			req.conn.Close()
			t.Logf("%d %q; the client wrote %d MiB", code, strings.TrimSpace(body), <-sent>>20)
			if code != tt.code {
				t.Errorf("status %d, want %d", code, tt.code)
			}
		})
	}
	_, peak := procMem(t, pid)
	t.Logf("gateway RSS %d MiB before, peak %d MiB after", before>>20, peak>>20)
	if peak > before+64<<20 {
		t.Errorf("gateway RSS peak grew by %d MiB on the 300 MB bodies, want < 64 MiB", (peak-before)>>20)
	}
}

// bzip2Of compresses data with the bzip2 program.
func bzip2Of(t *testing.T, data []byte) []byte {
	t.Helper()
	cmd := exec.Command("bzip2", "-c", "-9")
	cmd.Stdin = bytes.NewReader(data)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("bzip2: %v", err)
	}
	return out
}

// bzip2Bomb is a valid bzip2 NAR of one regular file of gib GiB of zeros,
// a few KiB in all: bzip2 streams may be concatenated, and the stream of
// 64 MiB of zeros is repeated. It returns the file and the NAR's size.
func bzip2Bomb(t *testing.T, gib int) ([]byte, uint64) {
	t.Helper()
	const zeros = 64 << 20
	frames := gib << 30 / zeros
	size := uint64(frames) * zeros
	head := narTokens("nix-archive-1", "(", "type", "regular", "contents")
	head = binary.LittleEndian.AppendUint64(head, size)
	tail := narTokens(")")
	var out bytes.Buffer
	out.Write(bzip2Of(t, head))
	frame := bzip2Of(t, make([]byte, zeros))
	for range frames {
		out.Write(frame)
	}
	out.Write(bzip2Of(t, tail))
	return out.Bytes(), uint64(len(head)) + size + uint64(len(tail))
}

// TestBoundsBombClientLeaves: the index stops decompressing a 4 GiB
// bzip2 bomb within a second of its uploader leaving, though the bomb
// needs no more bytes of the upload to go on (the ratio bound is off
// here, so that the decompression runs until the client leaves).
// Streamed, the index decompresses as the upload comes in: the client
// never ends it. Spooled (a co-located gateway), the index verifies the
// file once the upload is complete, while the client waits for the
// answer.
func TestBoundsBombClientLeaves(t *testing.T) {
	t.Run("streamed", func(t *testing.T) { testBombClientLeaves(t, 1, "-upload-spool", "") })
	t.Run("spooled", func(t *testing.T) { testBombClientLeaves(t, 0) })
}

// testBombClientLeaves announces more bytes than it sends.
func testBombClientLeaves(t *testing.T, short int, gatewayArgs ...string) {
	c := newCluster(t, withArgs("index", "-max-decompression-ratio", "0"), withArgs("gateway", gatewayArgs...))
	bomb, _ := bzip2Bomb(t, 4)
	t.Logf("bomb: %d bytes", len(bomb))
	// The gateway passes an upload on in chunks of 256 KiB: the bomb
	// with junk after it fills the first.
	bomb = append(bomb, bytes.Repeat([]byte("junk"), 64<<10)...)
	pid := c.pid("index")
	start := procCPU(t, pid)
	req := startRaw(t, c.httpAddr, "PUT", "/nar/"+sha256Nix32(bomb)+".nar.bz2",
		basicAuth(c.pushToken), "Content-Length: "+strconv.Itoa(len(bomb)+short))
	if _, err := req.conn.Write(bomb); err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Minute, "index busy decompressing", func() bool { return procCPU(t, pid)-start >= time.Second })
	req.conn.Close()
	left := time.Now()
	time.Sleep(time.Second) // the bound under test: a second after the client left; not synchronisation
	busy := procCPU(t, pid)
	// Two seconds more: on a loaded host a decompressor still running
	// gets a fraction of a core, and an idle index next to nothing.
	for time.Since(left) < 3*time.Second {
		time.Sleep(100 * time.Millisecond)
	}
	after := procCPU(t, pid)
	t.Logf("index CPU: %v for the bomb until 1s after the client left, %v in the 2s after", busy-start, after-busy)
	if after-busy > 150*time.Millisecond {
		t.Errorf("index used %v of CPU from 1s to 3s after the bomb's client left, want it idle", after-busy)
	}
}

// TestBoundsBombRefused: at the default limits, a 1 GiB bzip2 bomb of a
// few KiB is refused by the decompression ratio bound (400) at the cost
// of the floor, and nothing is stored.
func TestBoundsBombRefused(t *testing.T) {
	c := newCluster(t)
	bomb, _ := bzip2Bomb(t, 1)
	pid := c.pid("index")
	start := procCPU(t, pid)
	url := c.URL + "/nar/" + sha256Nix32(bomb) + ".nar.bz2"
	r := httpDo(t, "PUT", url, c.pushToken, bytes.NewReader(bomb), nil)
	cost := procCPU(t, pid) - start
	t.Logf("%d %q; index CPU %v", r.status, strings.TrimSpace(r.body), cost)
	if r.status != http.StatusBadRequest || !strings.Contains(r.body, "decompression bomb") {
		t.Errorf("PUT of a bomb: %d %q, want 400 refusing a decompression bomb", r.status, r.body)
	}
	if r := httpDo(t, "HEAD", url, "", nil, nil); r.status != http.StatusNotFound {
		t.Errorf("HEAD of the refused bomb: %d, want 404", r.status)
	}
}

// TestBoundsConcurrentUploads: past -max-concurrent-uploads, an upload is
// answered 503 with Retry-After at once.
func TestBoundsConcurrentUploads(t *testing.T) {
	// A gateway on the index's host spools an upload into a file the
	// index hands over (-upload-spool); a gateway without the spool
	// streams it. Either way the upload's PutNar is in flight while its
	// body comes, and the bound holds.
	t.Run("spooled", func(t *testing.T) { testConcurrentUploads(t) })
	t.Run("streamed", func(t *testing.T) { testConcurrentUploads(t, "-upload-spool", "") })
}

// testConcurrentUploads holds one upload in flight, waits until the
// index has it, and checks that another is refused.
func testConcurrentUploads(t *testing.T, gatewayArgs ...string) {
	const uploading = `grpc_server_in_flight{grpc_method="PutNar",grpc_service="nixcache.index.v1.IndexService",grpc_type="client_stream"}`
	c := newCluster(t, withArgs("index", "-max-concurrent-uploads", "1"), withArgs("gateway", gatewayArgs...))
	// The one upload allowed: it never finishes.
	nar := canonicalNAR(t, "held", 1000, 'h')
	held := startRaw(t, c.httpAddr, "PUT", "/nar/"+sha256Nix32(nar)+".nar",
		basicAuth(c.pushToken), "Content-Length: "+strconv.Itoa(len(nar)))
	if _, err := held.conn.Write(nar[:100]); err != nil {
		t.Fatal(err)
	}
	// Once the index has taken the held upload (it is in flight there),
	// another is refused with 503. Sending others before that could take
	// the slot from under the held upload, which would then be the one
	// refused.
	waitMetric(t, "http://"+c.indexMetrics, uploading, 1, 20*time.Second)
	other := []byte("not a NAR at all")
	last := httpDo(t, "PUT", c.URL+"/nar/"+sha256Nix32(other)+".nar", c.pushToken, bytes.NewReader(other), nil)
	if last.status != http.StatusServiceUnavailable {
		t.Fatalf("an upload while the held one is in flight: %d %q, want 503", last.status, last.body)
	}
	if last.header.Get("Retry-After") == "" || !strings.Contains(last.body, "max-concurrent-uploads") {
		t.Errorf("503 %q with headers %v: want Retry-After and a message naming -max-concurrent-uploads", last.body, last.header)
	}
	// The held upload completes; then uploads go through again.
	if _, err := held.conn.Write(nar[100:]); err != nil {
		t.Fatal(err)
	}
	if code, body, _ := held.answer(t, 30*time.Second); code != http.StatusNoContent {
		t.Fatalf("held upload: %d %q", code, body)
	}
	if r := httpDo(t, "PUT", c.URL+"/nar/"+sha256Nix32(other)+".nar", c.pushToken, bytes.NewReader(other), nil); r.status != http.StatusBadRequest {
		t.Errorf("upload after the held one finished: %d %q, want 400 (not a NAR)", r.status, r.body)
	}
}

// pushRaw pushes a NAR file and its narinfo with extra lines, as nix copy
// does; it returns the narinfo's status and body.
func pushRaw(t *testing.T, c *cluster, storePath string, nar, file []byte, comp, ext, extra string) response {
	t.Helper()
	if r := httpDo(t, "PUT", c.URL+"/nar/"+sha256Nix32(file)+".nar"+ext, c.pushToken, bytes.NewReader(file), nil); r.status != http.StatusNoContent {
		t.Fatalf("PUT NAR: %d %q", r.status, r.body)
	}
	narinfo := fmt.Sprintf("StorePath: %s\nURL: nar/%s.nar%s\nCompression: %s\nFileHash: sha256:%s\nFileSize: %d\nNarHash: sha256:%s\nNarSize: %d\nReferences: \n%s",
		storePath, sha256Nix32(file), ext, comp, sha256Nix32(file), len(file), sha256Nix32(nar), len(nar), extra)
	hash := strings.TrimPrefix(storePath, "/nix/store/")[:32]
	return httpDo(t, "PUT", c.URL+"/"+hash+".narinfo", c.pushToken, strings.NewReader(narinfo), nil)
}

// TestBoundsForeignSignatures: pushes carrying 1,800 Sig lines by
// untrusted keys and a forged one by a trusted key leave the path
// servable, with the cache's signature and the trusted key's valid one
// only.
func TestBoundsForeignSignatures(t *testing.T) {
	trusted, err := signature.Generate("trusted.example.org-1")
	if err != nil {
		t.Fatal(err)
	}
	c := newCluster(t,
		withArgs("index", "-trusted-sig-keys", trusted.Public().String()),
		withArgs("gateway", "-max-narinfo-size", strconv.Itoa(1<<20)))
	nar := canonicalNAR(t, "signed", 500, 's')
	storePath := "/nix/store/" + randomHashPart(t) + "-signed"
	narHash, err := nixhash.Parse("sha256:" + sha256Nix32(nar))
	if err != nil {
		t.Fatal(err)
	}
	fp := signature.Fingerprint("/nix/store", storePath, narHash, uint64(len(nar)), nil)
	stranger, err := signature.Generate("stranger.example.org-1")
	if err != nil {
		t.Fatal(err)
	}
	for push := range 3 {
		var extra strings.Builder
		for i := range 1800 {
			extra.WriteString("Sig: " + stranger.Sign(fmt.Sprintf("%s;%d;%d", fp, push, i)) + "\n")
		}
		extra.WriteString("Sig: " + trusted.Sign(fp+"forged") + "\n")
		extra.WriteString("Sig: " + trusted.Sign(fp) + "\n")
		if r := pushRaw(t, c, storePath, nar, nar, "none", "", extra.String()); r.status != http.StatusNoContent {
			t.Fatalf("push %d: %d %q", push, r.status, r.body)
		}
	}
	r := httpDo(t, "GET", c.URL+"/"+strings.TrimPrefix(storePath, "/nix/store/")[:32]+".narinfo", "", nil, nil)
	if r.status != http.StatusOK {
		t.Fatalf("narinfo: %d %q", r.status, r.body)
	}
	ours, err := signature.ParsePublicKey(c.publicKey)
	if err != nil {
		t.Fatal(err)
	}
	var sigs []string
	for _, line := range strings.Split(r.body, "\n") {
		if sig, ok := strings.CutPrefix(line, "Sig: "); ok {
			sigs = append(sigs, sig)
		}
	}
	if len(sigs) != 2 || !ours.Verify(fp, sigs[0]) || sigs[1] != trusted.Sign(fp) {
		t.Errorf("narinfo has %d signatures %.200q, want the cache's and the trusted key's", len(sigs), sigs)
	}
}

// TestBoundsNixServeRange: a Range on the nix-serve URL of a path whose
// file is compressed is refused with 416 unless it starts at 0: reaching
// the offset would cost decompressing everything before it.
func TestBoundsNixServeRange(t *testing.T) {
	c := newCluster(t)
	contents := make([]byte, 4<<20)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range contents {
		contents[i] = byte('a' + rng.IntN(16))
	}
	nar := canonicalNARBytes(t, "ranged", contents)
	file := compress(t, compression.XZ, nar)
	hash := randomHashPart(t)
	if r := pushRaw(t, c, "/nix/store/"+hash+"-ranged", nar, file, "xz", ".xz", ""); r.status != http.StatusNoContent {
		t.Fatalf("push: %d %q", r.status, r.body)
	}
	url := c.URL + "/nar/" + hash + ".nar"
	r := httpDo(t, "GET", url, "", nil, http.Header{"Range": {fmt.Sprintf("bytes=%d-", len(nar)-400)}})
	if r.status != http.StatusRequestedRangeNotSatisfiable || !strings.Contains(r.body, "compressed") ||
		r.header.Get("Content-Range") != fmt.Sprintf("bytes */%d", len(nar)) {
		t.Errorf("Range near the end: %d %q %v, want 416 saying the file is compressed, with Content-Range", r.status, r.body, r.header)
	}
	r = httpDo(t, "GET", url, "", nil, http.Header{"Range": {"bytes=0-99"}})
	if r.status != http.StatusPartialContent || r.body != string(nar[:100]) {
		t.Errorf("Range from 0: %d (%d bytes), want 206 with the first 100 bytes", r.status, len(r.body))
	}
}

// TestBoundsLogs: a build log that is not what its Content-Encoding says
// is refused at upload, never served later as an empty 200.
func TestBoundsLogs(t *testing.T) {
	c := newCluster(t)
	url := c.URL + "/log/" + randomHashPart(t) + "-bad-log.drv"
	r := httpDo(t, "PUT", url, c.pushToken, strings.NewReader("this is not xz"), http.Header{"Content-Encoding": {"xz"}})
	if r.status != http.StatusBadRequest {
		t.Errorf("PUT of an invalid xz log: %d %q, want 400", r.status, r.body)
	}
	if r := httpDo(t, "GET", url, "", nil, nil); r.status != http.StatusNotFound {
		t.Errorf("GET of the refused log: %d %q, want 404", r.status, r.body)
	}
	text := strings.Repeat("building\n", 1000)
	good := c.URL + "/log/" + randomHashPart(t) + "-good-log.drv"
	if r := httpDo(t, "PUT", good, c.pushToken, bytes.NewReader(compress(t, compression.XZ, []byte(text))), http.Header{"Content-Encoding": {"xz"}}); r.status != http.StatusNoContent {
		t.Fatalf("PUT of an xz log: %d %q", r.status, r.body)
	}
	if r := httpDo(t, "GET", good, "", nil, nil); r.status != http.StatusOK || r.body != text {
		t.Errorf("GET of the xz log: %d (%d bytes), want 200 with the text", r.status, len(r.body))
	}
}

// TestBoundsStalledUploads: an upload whose client stops sending is cut
// after -transfer-idle-timeout and answered 408, a NAR (once answered 200
// with an empty body) as a build log (once held open for ever).
func TestBoundsStalledUploads(t *testing.T) {
	c := newCluster(t, withArgs("gateway", "-transfer-idle-timeout", "1s"))
	for _, path := range []string{
		"/nar/" + sha256Nix32([]byte("stalled")) + ".nar",
		"/log/" + randomHashPart(t) + "-stalled.drv",
	} {
		t.Run(strings.Split(path, "/")[1], func(t *testing.T) {
			req := startRaw(t, c.httpAddr, "PUT", path, basicAuth(c.pushToken), "Content-Length: 100000")
			if _, err := req.conn.Write(narTokens("nix-archive-1")); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			code, body, _ := req.answer(t, 30*time.Second)
			t.Logf("%d %q after %v", code, strings.TrimSpace(body), time.Since(start))
			if code != http.StatusRequestTimeout {
				t.Errorf("stalled upload: %d %q, want 408", code, body)
			}
		})
	}
}

// canonicalNARBytes writes, with nar.Writer, a directory holding one
// file of contents.
func canonicalNARBytes(t *testing.T, name string, contents []byte) []byte {
	t.Helper()
	var out bytes.Buffer
	w := nar.NewWriter(&out)
	if err := w.WriteHeader(&nar.Header{Path: "/", Type: nar.TypeDirectory}); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteHeader(&nar.Header{Path: "/" + name, Type: nar.TypeRegular, Size: uint64(len(contents))}); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(contents); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}
