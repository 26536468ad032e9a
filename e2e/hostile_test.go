package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/nixcache/nixcache/nix/compression"
	"github.com/nixcache/nixcache/nix/nar"
	"github.com/nixcache/nixcache/nix/nixbase32"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
)

// hostileMaxNar is the index's -max-nar-size in TestHostileInput.
const hostileMaxNar = 1 << 20

// narTokens writes NAR strings: each length-prefixed and padded to 8 bytes,
// as the format has them, with no check of their order or meaning, so that
// a test can write what nar.Writer refuses.
func narTokens(tokens ...string) []byte {
	var b bytes.Buffer
	for _, s := range tokens {
		var n [8]byte
		binary.LittleEndian.PutUint64(n[:], uint64(len(s)))
		b.Write(n[:])
		b.WriteString(s)
		b.Write(make([]byte, (8-len(s)%8)%8))
	}
	return b.Bytes()
}

// rawEntry is the tokens of one directory entry holding a regular file.
func rawEntry(name, contents string) []string {
	return []string{"entry", "(", "name", name, "node", "(", "type", "regular", "contents", contents, ")", ")"}
}

// rawDir is a NAR of a directory with entries, in the order given.
func rawDir(entries ...[]string) []byte {
	t := []string{"nix-archive-1", "(", "type", "directory"}
	for _, e := range entries {
		t = append(t, e...)
	}
	return narTokens(append(t, ")")...)
}

// canonicalNAR writes, with nar.Writer, a directory holding one file of
// size bytes of b.
func canonicalNAR(t *testing.T, name string, size int, b byte) []byte {
	t.Helper()
	var out bytes.Buffer
	w := nar.NewWriter(&out)
	if err := w.WriteHeader(&nar.Header{Path: "/", Type: nar.TypeDirectory}); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteHeader(&nar.Header{Path: "/" + name, Type: nar.TypeRegular, Size: uint64(size)}); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(bytes.Repeat([]byte{b}, size)); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

func compress(t *testing.T, name string, data []byte) []byte {
	t.Helper()
	var out bytes.Buffer
	w, err := compression.NewWriter(name, &out)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// randomHashPart is a fresh store path hash part.
func randomHashPart(t *testing.T) string {
	t.Helper()
	b := make([]byte, 20)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return nixbase32.EncodeToString(b)
}

// rawHTTP sends req verbatim on a fresh connection to addr and returns the
// status code, or 0 when the server closed the connection without one.
func rawHTTP(t *testing.T, addr, req string) (int, string) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.WriteString(conn, req); err != nil {
		// The server may answer and close before it has read everything.
		t.Logf("write: %v", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return resp.StatusCode, string(body)
}

// TestHostileInput sends hostile requests over real HTTP to the gateway and
// over gRPC to the index. Each is refused with a 4xx (or InvalidArgument)
// that has a message, nothing of it is stored, and the cache goes on
// serving a control path.
func TestHostileInput(t *testing.T) {
	c := newCluster(t, withArgs("index", "-max-nar-size", fmt.Sprint(hostileMaxNar)))

	// The control: a good upload, served throughout.
	ctlNAR := canonicalNAR(t, "hello", 100, 'h')
	ctlHash := randomHashPart(t)
	ctlPath := "/nix/store/" + ctlHash + "-hostile-control"
	ctlFile := sha256Nix32(ctlNAR)
	narinfoFor := func(storePath string, file []byte, comp, ext string, narData []byte) string {
		return fmt.Sprintf("StorePath: %s\nURL: nar/%s.nar%s\nCompression: %s\nFileHash: sha256:%s\nFileSize: %d\nNarHash: sha256:%s\nNarSize: %d\nReferences: \n",
			storePath, sha256Nix32(file), ext, comp, sha256Nix32(file), len(file), sha256Nix32(narData), len(narData))
	}
	ctlNarinfo := narinfoFor(ctlPath, ctlNAR, "none", "", ctlNAR)
	if r := httpDo(t, "PUT", c.URL+"/nar/"+ctlFile+".nar", c.pushToken, bytes.NewReader(ctlNAR), nil); r.status/100 != 2 {
		t.Fatalf("PUT control NAR: %d %q", r.status, r.body)
	}
	if r := httpDo(t, "PUT", c.URL+"/"+ctlHash+".narinfo", c.pushToken, strings.NewReader(ctlNarinfo), nil); r.status/100 != 2 {
		t.Fatalf("PUT control narinfo: %d %q", r.status, r.body)
	}
	controlServed := func(t *testing.T) {
		t.Helper()
		if r := httpDo(t, "GET", c.URL+"/"+ctlHash+".narinfo", "", nil, nil); r.status != http.StatusOK {
			t.Fatalf("control narinfo: %d %q", r.status, r.body)
		}
		if r := httpDo(t, "GET", c.URL+"/nar/"+ctlFile+".nar", "", nil, nil); r.status != http.StatusOK || r.body != string(ctlNAR) {
			t.Fatalf("control NAR: %d (%d bytes)", r.status, len(r.body))
		}
	}
	controlServed(t)

	want4xx := func(t *testing.T, what string, code int, body string) {
		t.Helper()
		if code < 400 || code > 499 {
			t.Errorf("%s: %d %q, want a 4xx", what, code, body)
		} else if strings.TrimSpace(body) == "" && code != http.StatusRequestHeaderFieldsTooLarge {
			t.Errorf("%s: %d without a message", what, code)
		}
	}

	t.Run("traversal", func(t *testing.T) {
		routes := []string{"/nar/", "/", "/log/", "/realisations/", "/debuginfo/", "/api/v1/paths/"}
		evil := []string{
			"../" + ctlHash + ".narinfo",
			"../../../../etc/passwd",
			"%2e%2e/%2e%2e/etc/passwd",
			"%2e%2e%2f%2e%2e%2fetc%2fpasswd",
			"%252e%252e%252f%252e%252e%252fetc%252fpasswd",
			"..%5c..%5cetc%5cpasswd",
			`..\..\etc\passwd`,
			"/etc/passwd",
			"x%00.nar",
			ctlFile + ".nar%00.narinfo",
			ctlHash + "%00.narinfo",
			"....//....//etc/passwd",
			"%c0%ae%c0%ae/etc/passwd",
		}
		for _, route := range routes {
			for _, e := range evil {
				target := route + e
				for _, m := range []struct{ method, token, body string }{
					{"GET", c.adminToken, ""},
					{"HEAD", "", ""},
					{"PUT", c.pushToken, "hostile"},
				} {
					req := fmt.Sprintf("%s %s HTTP/1.1\r\nHost: cache\r\nConnection: close\r\n", m.method, target)
					if m.token != "" {
						req += "Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte("nixcache:"+m.token)) + "\r\n"
					}
					req += fmt.Sprintf("Content-Length: %d\r\n\r\n%s", len(m.body), m.body)
					code, body := rawHTTP(t, c.httpAddr, req)
					if m.method == "HEAD" {
						if code < 400 || code > 499 {
							t.Errorf("HEAD %s: %d, want a 4xx", target, code)
						}
						continue
					}
					if m.method == "PUT" && code == http.StatusNotImplemented && !strings.HasPrefix(target, "/nar/") {
						// The documented answer to a PUT of what nixcache
						// does not store (putUnsupported): it has a message.
						if !strings.Contains(body, "does not store") {
							t.Errorf("PUT %s: 501 %q", target, body)
						}
						continue
					}
					want4xx(t, m.method+" "+target, code, body)
				}
			}
		}
		controlServed(t)
	})

	t.Run("invalid nix32", func(t *testing.T) {
		for _, target := range []string{
			"/" + strings.Repeat("e", 32) + ".narinfo", // e is not a nix32 digit
			"/" + strings.Repeat("0", 31) + ".narinfo",
			"/" + strings.Repeat("0", 33) + ".narinfo",
			"/" + strings.ToUpper(ctlHash) + ".narinfo",
			"/nar/" + strings.Repeat("u", 52) + ".nar",
			"/nar/" + ctlFile[:51] + ".nar",
			"/nar/" + ctlFile + "0.nar",
			"/nar/" + ctlFile + ".nar.rar",
		} {
			r := httpDo(t, "GET", c.URL+target, "", nil, nil)
			want4xx(t, "GET "+target, r.status, r.body)
			r = httpDo(t, "PUT", c.URL+target, c.pushToken, strings.NewReader("x"), nil)
			want4xx(t, "PUT "+target, r.status, r.body)
		}
	})

	t.Run("over-long", func(t *testing.T) {
		long := strings.Repeat("a", 256<<10)
		code, body := rawHTTP(t, c.httpAddr, "GET /"+long+".narinfo HTTP/1.1\r\nHost: cache\r\nConnection: close\r\n\r\n")
		if code != http.StatusRequestURITooLong && code != http.StatusRequestHeaderFieldsTooLarge && code != http.StatusBadRequest {
			t.Errorf("256 KiB URL: %d %q, want 414, 431 or 400", code, body)
		}
		code, body = rawHTTP(t, c.httpAddr, "GET /nix-cache-info HTTP/1.1\r\nHost: cache\r\nX-Long: "+long+"\r\nConnection: close\r\n\r\n")
		if code != http.StatusRequestHeaderFieldsTooLarge && code != http.StatusBadRequest {
			t.Errorf("256 KiB header: %d %q, want 431 or 400", code, body)
		}
		controlServed(t)
	})

	// The narinfos below describe the control NAR, already stored, under
	// a fresh store path: only the narinfo is wrong.
	t.Run("narinfo", func(t *testing.T) {
		forged := make([]byte, 64)
		rand.Read(forged)
		for _, tc := range []struct {
			name string
			body func(hash, path, good string) string
		}{
			{"repeated StorePath", func(hash, path, good string) string { return good + "StorePath: " + path + "\n" }},
			{"repeated NarHash", func(hash, path, good string) string { return good + "NarHash: sha256:" + ctlFile + "\n" }},
			{"repeated URL", func(hash, path, good string) string { return "URL: nar/" + ctlFile + ".nar\n" + good }},
			{"NarSize 0", func(hash, path, good string) string {
				return strings.Replace(good, fmt.Sprintf("NarSize: %d", len(ctlNAR)), "NarSize: 0", 1)
			}},
			{"StorePath hash differs from URL", func(hash, path, good string) string { return strings.Replace(good, hash, randomHashPart(t), 1) }},
			{"StorePath outside the store", func(hash, path, good string) string {
				return strings.Replace(good, "/nix/store/", "/nix/store/../../etc/", 1)
			}},
			{"forged Sig by the cache's key", func(hash, path, good string) string {
				return good + "Sig: e2e-cache-1:" + base64.StdEncoding.EncodeToString(forged) + "\n"
			}},
			{"URL traversal", func(hash, path, good string) string { return strings.Replace(good, "URL: nar/", "URL: nar/../../", 1) }},
			{"NUL in a value", func(hash, path, good string) string {
				return strings.Replace(good, "References: ", "References: a\x00b", 1)
			}},
			{"over-long line", func(hash, path, good string) string { return good + "Deriver: " + strings.Repeat("x", 128<<10) + "\n" }},
		} {
			// A fresh path for each, so that one wrongly accepted does
			// not hide the next.
			hash := randomHashPart(t)
			path := "/nix/store/" + hash + "-hostile"
			body := tc.body(hash, path, narinfoFor(path, ctlNAR, "none", "", ctlNAR))
			r := httpDo(t, "PUT", c.URL+"/"+hash+".narinfo", c.pushToken, strings.NewReader(body), nil)
			want4xx(t, tc.name, r.status, r.body)
			if r := httpDo(t, "GET", c.URL+"/"+hash+".narinfo", "", nil, nil); r.status != http.StatusNotFound {
				t.Errorf("%s: GET narinfo after refusal: %d, want 404\n%s", tc.name, r.status, r.body)
			}
		}
		controlServed(t)
	})

	t.Run("nar", func(t *testing.T) {
		big := canonicalNAR(t, "zeros", 2*hostileMaxNar, 0)
		file := func(contents string) []string { return []string{"(", "type", "regular", "contents", contents, ")"} }
		for _, tc := range []struct {
			name string
			data []byte
			ext  string
		}{
			{"not a NAR", []byte("this is not a nix archive at all, just text\n"), ""},
			{"empty", nil, ""},
			{"truncated", ctlNAR[:len(ctlNAR)-13], ""},
			{"truncated at a token", ctlNAR[:len(ctlNAR)-8], ""},
			{"trailing garbage", append(bytes.Clone(ctlNAR), narTokens("(")...), ""},
			{"unsorted entries", rawDir(rawEntry("b", "1"), rawEntry("a", "2")), ""},
			{"duplicate entries", rawDir(rawEntry("a", "1"), rawEntry("a", "2")), ""},
			{"entry ..", rawDir(rawEntry("..", "1")), ""},
			{"entry .", rawDir(rawEntry(".", "1")), ""},
			{"entry with /", rawDir(rawEntry("a/b", "1")), ""},
			{"entry empty", rawDir(rawEntry("", "1")), ""},
			{"entry with NUL", rawDir(rawEntry("a\x00b", "1")), ""},
			{"wrong magic", narTokens(append([]string{"nix-archive-2"}, file("x")...)...), ""},
			{"unknown type", narTokens("nix-archive-1", "(", "type", "fifo", ")"), ""},
			{"huge contents length", append(narTokens("nix-archive-1", "(", "type", "regular"), append(narTokens("contents"), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f)...), ""},
			{"over the size limit", big, ""},
			{"zstd bomb", compress(t, compression.Zstd, big), ".zst"},
			{"xz bomb", compress(t, compression.XZ, big), ".xz"},
			{"xz of garbage", compress(t, compression.XZ, []byte("not a NAR")), ".xz"},
			{"zstd header, garbage after", append([]byte{0x28, 0xb5, 0x2f, 0xfd}, bytes.Repeat([]byte{0xff}, 64)...), ".zst"},
		} {
			url := c.URL + "/nar/" + sha256Nix32(tc.data) + ".nar" + tc.ext
			r := httpDo(t, "PUT", url, c.pushToken, bytes.NewReader(tc.data), nil)
			want4xx(t, tc.name, r.status, r.body)
			if st := httpStatus(t, "HEAD", url, "", nil); st != http.StatusNotFound {
				t.Errorf("%s: HEAD after refusal: %d, want 404", tc.name, st)
			}
			if st := httpStatus(t, "HEAD", c.URL+"/nar/"+sha256Nix32(tc.data)+".nar", "", nil); st != http.StatusNotFound {
				t.Errorf("%s: HEAD .nar after refusal: %d, want 404", tc.name, st)
			}
		}
		controlServed(t)
	})

	t.Run("grpc", func(t *testing.T) {
		conn, err := grpc.NewClient(c.indexAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		idx := indexv1.NewIndexServiceClient(conn)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		want := func(what string, err error) {
			t.Helper()
			if st := status.Code(err); st != codes.InvalidArgument && st != codes.NotFound {
				t.Errorf("%s: %v, want InvalidArgument or NotFound", what, err)
			}
		}
		for _, bad := range []string{"../" + ctlHash, "..", "/etc/passwd", ctlHash + "\x00", strings.Repeat("e", 32), `..\x`, ""} {
			_, err := idx.GetPathInfo(ctx, &indexv1.GetPathInfoRequest{HashPart: bad})
			want(fmt.Sprintf("GetPathInfo(%q)", bad), err)
			_, err = idx.StatNar(ctx, &indexv1.StatNarRequest{FileHash: "sha256:" + bad})
			want(fmt.Sprintf("StatNar(%q)", bad), err)
			_, err = idx.StatNar(ctx, &indexv1.StatNarRequest{FileHash: bad})
			want(fmt.Sprintf("StatNar(%q)", bad), err)
			s, err := idx.GetNar(ctx, &indexv1.GetNarRequest{Selector: &indexv1.GetNarRequest_FileHash{FileHash: "sha256:../" + bad}})
			if err == nil {
				_, err = s.Recv()
			}
			want(fmt.Sprintf("GetNar(%q)", bad), err)
			for _, kind := range []indexv1.ArtifactKind{indexv1.ArtifactKind_ARTIFACT_KIND_LOG, indexv1.ArtifactKind_ARTIFACT_KIND_LISTING,
				indexv1.ArtifactKind_ARTIFACT_KIND_REALISATION, indexv1.ArtifactKind_ARTIFACT_KIND_DEBUG_INFO} {
				s, err := idx.GetArtifact(ctx, &indexv1.GetArtifactRequest{Kind: kind, Key: bad})
				if err == nil {
					_, err = s.Recv()
				}
				want(fmt.Sprintf("GetArtifact(%v, %q)", kind, bad), err)
			}
		}
		// A path info naming a traversal, straight to the index, with a
		// push token (without one it is refused before it is read).
		pushCtx := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+c.pushToken)
		_, err = idx.PutPathInfo(pushCtx, &indexv1.PutPathInfoRequest{Info: &indexv1.PathInfo{
			StorePath: "/nix/store/../../etc/" + ctlHash + "-x",
			NarHash:   "sha256:" + ctlFile, NarSize: uint64(len(ctlNAR)),
			Url: "nar/../../" + ctlFile + ".nar",
		}})
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("PutPathInfo with traversal: %v, want InvalidArgument", err)
		}
		controlServed(t)
	})

	// Still up: every service answers its health check.
	controlServed(t)
}
