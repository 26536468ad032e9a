package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// s3Server is a real S3 server on loopback: Versity Gateway (versitygw,
// installed by scripts/tools.sh) over a temporary directory, with one
// empty bucket.
type s3Server struct {
	t        *testing.T
	endpoint string // http://127.0.0.1:PORT
	bucket   string
	access   string
	secret   string
	client   *minio.Client
}

// versitygwPath finds versitygw: on PATH, or where scripts/tools.sh
// installs it.
func versitygwPath(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p
	}
	p, err := filepath.Abs("../.tools/bin/versitygw")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("versitygw is required (scripts/tools.sh installs it): %v", err)
	}
	return p
}

// startS3 starts versitygw on a free loopback port, waits until it
// answers and makes the bucket; it is stopped when the test ends.
func startS3(t *testing.T) *s3Server {
	t.Helper()
	s := &s3Server{t: t, bucket: "nixcache-e2e", access: "e2e" + randomHex(t, 8), secret: randomHex(t, 20)}
	addr := freeAddr(t)
	s.endpoint = "http://" + addr
	root := t.TempDir()
	logPath := filepath.Join(t.TempDir(), "versitygw.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(versitygwPath(t), "--access", s.access, "--secret", s.secret, "--port", addr, "posix", root)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("start versitygw: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("--- versitygw log ---\n%s", b)
		}
	})
	s.client, err = minio.New(addr, &minio.Options{Creds: credentials.NewStaticV4(s.access, s.secret, ""),
		Region: "us-east-1", BucketLookup: minio.BucketLookupPath})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "versitygw answering", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := s.client.ListBuckets(ctx)
		cancel()
		if err == nil {
			return true, ""
		}
		select {
		case <-done:
			b, _ := os.ReadFile(logPath)
			t.Fatalf("versitygw exited before it answered: %v\n%s", err, b)
		default:
		}
		return false, err.Error()
	})
	if err := s.client.MakeBucket(context.Background(), s.bucket, minio.MakeBucketOptions{}); err != nil {
		t.Fatalf("make bucket: %v", err)
	}
	return s
}

// withS3 makes the index keep its NAR files in the server's bucket, the
// credentials in the environment (as AWS tools take them); endpoint ""
// is the server itself.
func withS3(s *s3Server, endpoint string, args ...string) clusterOption {
	if endpoint == "" {
		endpoint = s.endpoint
	}
	return func(c *cluster) {
		c.extraArgs["index"] = append(append(c.extraArgs["index"], "-nar-backend", "s3", "-s3-endpoint", endpoint,
			"-s3-bucket", s.bucket, "-s3-path-style"), args...)
		c.extraEnv["index"] = append(c.extraEnv["index"], "AWS_ACCESS_KEY_ID="+s.access, "AWS_SECRET_ACCESS_KEY="+s.secret)
	}
}

// withS3CredentialsFile is withS3 with the credentials in a shared
// credentials file (-s3-credentials-file) instead.
func withS3CredentialsFile(s *s3Server) clusterOption {
	return func(c *cluster) {
		file := filepath.Join(c.dir, "aws-credentials")
		content := fmt.Sprintf("[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n", s.access, s.secret)
		if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
			c.t.Fatal(err)
		}
		c.extraArgs["index"] = append(c.extraArgs["index"], "-nar-backend", "s3", "-s3-endpoint", s.endpoint,
			"-s3-bucket", s.bucket, "-s3-path-style", "-s3-credentials-file", file)
	}
}

// objects lists the bucket: object name to size.
func (s *s3Server) objects() map[string]int64 {
	s.t.Helper()
	m := map[string]int64{}
	for obj := range s.client.ListObjects(context.Background(), s.bucket, minio.ListObjectsOptions{Recursive: true}) {
		if obj.Err != nil {
			s.t.Fatalf("list bucket: %v", obj.Err)
		}
		m[obj.Key] = obj.Size
	}
	return m
}

// incompleteUploads lists the multipart uploads begun and neither
// completed nor aborted.
func (s *s3Server) incompleteUploads() []string {
	s.t.Helper()
	var names []string
	for u := range s.client.ListIncompleteUploads(context.Background(), s.bucket, "", true) {
		if u.Err != nil {
			s.t.Fatalf("list multipart uploads: %v", u.Err)
		}
		names = append(names, u.Key+" "+u.UploadID)
	}
	return names
}

// get reads an object whole.
func (s *s3Server) get(name string) []byte {
	s.t.Helper()
	obj, err := s.client.GetObject(context.Background(), s.bucket, name, minio.GetObjectOptions{})
	if err != nil {
		s.t.Fatal(err)
	}
	defer obj.Close()
	b, err := io.ReadAll(obj)
	if err != nil {
		s.t.Fatalf("get %s: %v", name, err)
	}
	return b
}

// narObject returns the narinfo URL of a pushed path and the name of the
// object the index should keep its file under.
func narObject(t *testing.T, c *cluster, storePath string) (narURL, object string) {
	t.Helper()
	resp := httpDo(t, "GET", c.URL+"/"+hashPart(storePath)+".narinfo", "", nil, nil)
	for _, line := range strings.Split(resp.body, "\n") {
		if u, ok := strings.CutPrefix(line, "URL: "); ok {
			base := strings.TrimPrefix(u, "nar/")
			return u, "nars/" + base[:2] + "/" + base
		}
	}
	t.Fatalf("no URL in the narinfo of %s (%d): %s", storePath, resp.status, resp.body)
	return "", ""
}

// noRedirects is an HTTP client that shows redirects rather than
// following them.
var noRedirects = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

// The suite of push_test.go, with the NAR files in a bucket.
func TestPushAndSubstituteS3(t *testing.T) {
	testPushAndSubstitute(t, newCluster(t, withS3(startS3(t), "")))
}

func TestOtherKeyRefusedS3(t *testing.T) {
	testOtherKeyRefused(t, newCluster(t, withS3(startS3(t), "")))
}

func TestPushNeedsCredentialsS3(t *testing.T) {
	s := startS3(t)
	testPushNeedsCredentials(t, newCluster(t, withS3(s, "")))
}

func TestRestartKeepsEverythingS3(t *testing.T) {
	testRestartKeepsEverything(t, newCluster(t, withS3(startS3(t), "")))
}

// TestS3FilesAndRanges: what a push stores is in the bucket under the
// documented names (nothing on the index's disk), a NAR larger than a
// part goes up in parts, and byte ranges streamed from the bucket through
// the index are right, of stored files and of NARs decompressed on the
// fly.
func TestS3FilesAndRanges(t *testing.T) {
	s := startS3(t)
	c := newCluster(t, withS3(s, "", "-s3-part-size", "5242880"))
	push := nixConfig("netrc-file = " + c.netrc(c.pushToken))

	top, closure := buildClosure(t)
	mustNix(t, push, "nix", "copy", "--to", c.URL+"?compression=xz", top)
	big := addRandomFile(t, 11<<20)
	mustNix(t, push, "nix", "copy", "--to", c.URL+"?compression=none", big)

	objects := s.objects()
	if len(objects) != len(closure)+1 {
		t.Errorf("bucket holds %d objects, want %d: %v", len(objects), len(closure)+1, objects)
	}
	for _, p := range append(closure, big) {
		_, obj := narObject(t, c, p)
		if _, ok := objects[obj]; !ok {
			t.Errorf("%s: no object %s in the bucket: %v", p, obj, objects)
		}
	}
	if files, _ := filepath.Glob(filepath.Join(c.dir, "index", "nars", "*", "*")); len(files) != 0 {
		t.Errorf("NAR files on the index's disk: %v", files)
	}
	if files, _ := os.ReadDir(filepath.Join(c.dir, "index", "tmp")); len(files) != 0 {
		t.Errorf("upload temporaries left: %v", files)
	}
	_, bigObj := narObject(t, c, big)
	info, err := s.client.StatObject(context.Background(), s.bucket, bigObj, minio.StatObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// S3 gives an object uploaded in N parts the ETag "<md5 of the part md5s>-N".
	if !strings.HasSuffix(info.ETag, "-3") {
		t.Errorf("the 11 MiB NAR with 5 MiB parts has ETag %q, want one of a 3-part upload", info.ETag)
	}

	// Ranges of the stored (xz) file, as stored in the bucket.
	topURL, topObj := narObject(t, c, top)
	stored := s.get(topObj)
	for _, r := range [][2]int{{0, 0}, {10, 99}, {len(stored) - 5, len(stored) - 1}} {
		resp := rangeGet(t, noRedirects, c.URL+"/"+topURL, r[0], r[1])
		if resp.status != http.StatusPartialContent || resp.body != string(stored[r[0]:r[1]+1]) {
			t.Errorf("GET %s bytes=%d-%d: %d, %d bytes, want 206 and the object's bytes", topURL, r[0], r[1], resp.status, len(resp.body))
		}
	}
	// Ranges of the NAR decompressed from the bucket (nix-serve's URL form).
	dump, err := exec.Command("nix-store", "--dump", top).Output()
	if err != nil {
		t.Fatal(err)
	}
	// From its start only: reaching an offset of a compressed file's NAR
	// costs decompressing all before it (416).
	resp := rangeGet(t, noRedirects, c.URL+"/nar/"+hashPart(top)+".nar", 0, 199)
	if resp.status != http.StatusPartialContent || resp.body != string(dump[:200]) {
		t.Errorf("GET nar/<store hash>.nar bytes=0-199: %d, %d bytes, want 206 and nix-store --dump's bytes", resp.status, len(resp.body))
	}
	resp = rangeGet(t, noRedirects, c.URL+"/nar/"+hashPart(top)+".nar", 100, 199)
	if resp.status != http.StatusRequestedRangeNotSatisfiable {
		t.Errorf("GET nar/<store hash>.nar bytes=100-199: %d, want 416", resp.status)
	}
	bigDump, err := exec.Command("nix-store", "--dump", big).Output()
	if err != nil {
		t.Fatal(err)
	}
	bigURL, _ := narObject(t, c, big)
	from := len(bigDump) - 6<<20
	resp = rangeGet(t, noRedirects, c.URL+"/"+bigURL, from, len(bigDump)-1)
	if resp.status != http.StatusPartialContent || resp.body != string(bigDump[from:]) {
		t.Errorf("GET %s, its last 6 MiB: %d, %d bytes", bigURL, resp.status, len(resp.body))
	}

	// The big path substitutes into a fresh store.
	store := filepath.Join(t.TempDir(), "store")
	mustNix(t, nixConfig("substituters = "+c.URL, "trusted-public-keys = "+c.publicKey), "nix-store", "--store", store, "--realise", big)
	assertSameTree(t, big, filepath.Join(store, strings.TrimPrefix(big, "/")))
}

// addRandomFile adds a file of n random bytes to the host's store.
func addRandomFile(t *testing.T, n int) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), "random-"+randomHex(t, 4))
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(mustNix(t, nixConfig(), "nix-store", "--add", file))
}

// rangeGet GETs bytes from-to of url with client.
func rangeGet(t *testing.T, client *http.Client, url string, from, to int) response {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", from, to))
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: string(b)}
}

// TestS3Redirect: with -nar-redirect the gateway sends NAR downloads to
// presigned bucket URLs, signed for the endpoint clients use
// (-s3-presign-endpoint); the real Nix substitutes through them and curl's
// byte ranges work against the bucket.
func TestS3Redirect(t *testing.T) {
	s := startS3(t)
	// Clients reach the bucket under another name than the index does.
	public := strings.Replace(s.endpoint, "127.0.0.1", "localhost", 1)
	c := newCluster(t, withS3(s, "", "-s3-presign-endpoint", public), withArgs("gateway", "-nar-redirect"))
	top, closure := buildClosure(t)
	mustNix(t, nixConfig("netrc-file = "+c.netrc(c.pushToken)), "nix", "copy", "--to", c.URL+"?compression=zstd", top)

	topURL, topObj := narObject(t, c, top)
	stored := s.get(topObj)
	resp, err := noRedirects.Get(c.URL + "/" + topURL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc := resp.Header.Get("Location")
	if resp.StatusCode != http.StatusTemporaryRedirect || !strings.HasPrefix(loc, public+"/"+s.bucket+"/"+topObj+"?") ||
		!strings.Contains(loc, "X-Amz-Signature=") || resp.Header.Get("Cache-Control") != "no-store" {
		t.Fatalf("GET %s: %d, Location %q, Cache-Control %q; want 307 to a presigned URL of %s", topURL, resp.StatusCode, loc, resp.Header.Get("Cache-Control"), topObj)
	}
	// The presigned URL alone, without credentials, serves the file.
	if got := rangeGet(t, noRedirects, loc, 0, len(stored)-1); got.body != string(stored) {
		t.Errorf("presigned URL: %d, %d bytes, want the object's %d", got.status, len(got.body), len(stored))
	}
	// HEAD (asked by nix copy --to) and the nix-serve form are not redirected.
	if st := httpStatus(t, "HEAD", c.URL+"/"+topURL, "", nil); st != http.StatusOK {
		t.Errorf("HEAD %s: %d, want 200", topURL, st)
	}
	if resp, err := noRedirects.Get(c.URL + "/nar/" + hashPart(top) + ".nar"); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("GET nar/<store hash>.nar: %v %v, want 200", resp.StatusCode, err)
	} else {
		resp.Body.Close()
	}

	// curl follows the redirect with its Range.
	out, err := exec.Command("curl", "-sSfL", "-r", "5-104", c.URL+"/"+topURL).Output()
	if err != nil || string(out) != string(stored[5:105]) {
		t.Errorf("curl -L -r 5-104: %v, %d bytes, want the object's bytes 5..104", err, len(out))
	}
	code, err := exec.Command("curl", "-sSL", "-r", "5-104", "-o", "/dev/null", "-w", "%{http_code}", c.URL+"/"+topURL).Output()
	if err != nil || string(code) != "206" {
		t.Errorf("curl -L -r 5-104: status %q (%v), want 206", code, err)
	}

	// The real Nix substitutes the closure through the redirects.
	store := filepath.Join(t.TempDir(), "store")
	mustNix(t, nixConfig("substituters = "+c.URL, "trusted-public-keys = "+c.publicKey), "nix-store", "--store", store, "--realise", top)
	if got := pathInfos(t, nixConfig(), "--store", store, "--recursive", top); len(got) != len(closure) {
		t.Errorf("substituted %d paths, want %d", len(got), len(closure))
	}
	assertSameTree(t, top, filepath.Join(store, strings.TrimPrefix(top, "/")))
	// Redirected downloads count as downloads.
	if st := messages(t, c.admin("GetStats", ""))[0]; st["narDownloads"] == nil || st["narDownloads"] == "0" {
		t.Errorf("GetStats after redirected downloads: %v", st)
	}
}

// TestS3VerifyDeleteGC: Verify finds an object corrupted in the bucket,
// DeletePath and garbage collection remove the objects for real. The
// index reads its credentials from a file here.
func TestS3VerifyDeleteGC(t *testing.T) {
	s := startS3(t)
	c := newCluster(t, withS3CredentialsFile(s))
	push := nixConfig("netrc-file = " + c.netrc(c.pushToken))
	top1, _ := buildClosure(t)
	top2, _ := buildClosure(t)
	mustNix(t, push, "nix", "copy", "--to", c.URL, top1)
	mustNix(t, push, "nix", "copy", "--to", c.URL, top2)

	msgs := messages(t, c.admin("Verify", ""))
	if last := msgs[len(msgs)-1]; last["done"] != true || last["bad"] != nil && last["bad"] != "0" || last["checked"] != "6" {
		t.Fatalf("Verify of a sound bucket: %v", last)
	}

	// Corrupt top1's object through the S3 API: same size, one byte off.
	_, obj := narObject(t, c, top1)
	data := s.get(obj)
	data[len(data)/2] ^= 0xff
	if _, err := s.client.PutObject(context.Background(), s.bucket, obj, bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	msgs = messages(t, c.admin("Verify", ""))
	reported := false
	for _, m := range msgs {
		if m["storePath"] == top1 && m["ok"] != true && m["problem"] != nil {
			reported = true
		}
	}
	if last := msgs[len(msgs)-1]; !reported || last["bad"] != "1" {
		t.Fatalf("Verify did not report the corrupted %s: %v", top1, msgs)
	}
	if st := httpStatus(t, "GET", c.URL+"/"+hashPart(top1)+".narinfo", "", nil); st != http.StatusNotFound {
		t.Errorf("narinfo of the quarantined %s: %d, want 404", top1, st)
	}

	c.admin("DeletePath", `{"path": "`+top1+`"}`)
	if _, err := s.client.StatObject(context.Background(), s.bucket, obj, minio.StatObjectOptions{}); minio.ToErrorResponse(err).Code != "NoSuchKey" {
		t.Errorf("object of the deleted %s: %v, want NoSuchKey", top1, err)
	}
	if n := len(s.objects()); n != 5 {
		t.Errorf("%d objects after deleting one path, want 5", n)
	}

	deleted := c.gcPaths(`{"max_total_size": 1}`)
	if len(deleted) != 5 {
		t.Errorf("GC deleted %v, want the 5 paths left", deleted)
	}
	if left := s.objects(); len(left) != 0 {
		t.Errorf("objects left after collecting every path: %v", left)
	}
}

// faultProxy stands between the index and the S3 server; while failing
// is set it cuts every upload of a part (a multipart upload's PUT with a
// partNumber) before answering, as a network failure would.
type faultProxy struct {
	endpoint string
	failing  atomic.Bool
	down     atomic.Bool // cut every request
	cut      atomic.Int64
}

func newFaultProxy(t *testing.T, target string) *faultProxy {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	p := &faultProxy{}
	rp := httputil.NewSingleHostReverseProxy(u)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.endpoint = "http://" + ln.Addr().String()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p.down.Load() || p.failing.Load() && r.Method == http.MethodPut && r.URL.Query().Has("partNumber") {
			p.cut.Add(1)
			_, _ = io.CopyN(io.Discard, r.Body, 1<<20)
			panic(http.ErrAbortHandler) // closes the connection without an answer
		}
		rp.ServeHTTP(w, r)
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return p
}

// TestS3FailedUpload: an upload to the bucket that fails part-way is
// aborted: no object, no parts, nothing in the catalogue, the path not
// served; the push works once the bucket is reachable again. A download
// while the bucket is unreachable is a 503.
func TestS3FailedUpload(t *testing.T) {
	s := startS3(t)
	proxy := newFaultProxy(t, s.endpoint)
	c := newCluster(t, withS3(s, proxy.endpoint, "-s3-part-size", "5242880"))
	big := addRandomFile(t, 11<<20)
	// One attempt: Nix retries a failed upload by itself otherwise.
	push := nixConfig("netrc-file = "+c.netrc(c.pushToken), "download-attempts = 1")

	proxy.failing.Store(true)
	if _, errOut, err := nixRun(t, push, "nix", "copy", "--to", c.URL+"?compression=none", big); err == nil {
		t.Fatal("nix copy succeeded while the part uploads failed")
	} else if !strings.Contains(errOut, "503") {
		t.Errorf("nix copy failed, but not with 503 (bucket unavailable):\n%s", errOut)
	}
	if proxy.cut.Load() == 0 {
		t.Fatal("no part upload reached the proxy: the test did not test a failed multipart upload")
	}
	if objs := s.objects(); len(objs) != 0 {
		t.Errorf("objects after the failed upload: %v", objs)
	}
	if ups := s.incompleteUploads(); len(ups) != 0 {
		t.Errorf("multipart uploads left after the failed upload: %v", ups)
	}
	if st := httpStatus(t, "GET", c.URL+"/"+hashPart(big)+".narinfo", "", nil); st != http.StatusNotFound {
		t.Errorf("narinfo after the failed upload: %d, want 404", st)
	}
	if files, _ := os.ReadDir(filepath.Join(c.dir, "index", "tmp")); len(files) != 0 {
		t.Errorf("upload temporaries left: %v", files)
	}

	proxy.failing.Store(false)
	mustNix(t, push, "nix", "copy", "--to", c.URL+"?compression=none", big)
	_, obj := narObject(t, c, big)
	if _, ok := s.objects()[obj]; !ok {
		t.Errorf("no object %s after the second push", obj)
	}
	store := filepath.Join(t.TempDir(), "store")
	mustNix(t, nixConfig("substituters = "+c.URL, "trusted-public-keys = "+c.publicKey), "nix-store", "--store", store, "--realise", big)
	assertSameTree(t, big, filepath.Join(store, strings.TrimPrefix(big, "/")))

	proxy.down.Store(true)
	bigURL, _ := narObject(t, c, big)
	if resp := httpDo(t, "GET", c.URL+"/"+bigURL, "", nil, nil); resp.status != http.StatusServiceUnavailable {
		t.Errorf("GET %s with the bucket unreachable: %d, want 503", bigURL, resp.status)
	}
}

// TestS3StartupErrors: a missing bucket, refused credentials and no
// credentials stop the index at start with a message naming what to fix.
func TestS3StartupErrors(t *testing.T) {
	s := startS3(t)
	tests := []struct {
		name string
		args []string
		env  []string
		want string
	}{
		{"no such bucket", []string{"-s3-bucket", "not-there"}, []string{"AWS_ACCESS_KEY_ID=" + s.access, "AWS_SECRET_ACCESS_KEY=" + s.secret},
			`-s3-bucket: there is no bucket "not-there"`},
		{"wrong secret", []string{"-s3-bucket", s.bucket}, []string{"AWS_ACCESS_KEY_ID=" + s.access, "AWS_SECRET_ACCESS_KEY=wrong" + s.secret},
			"refused the credentials"},
		{"no credentials", []string{"-s3-bucket", s.bucket}, nil, "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or -s3-credentials-file"},
		{"no bucket flag", nil, nil, "-nar-backend=s3 needs -s3-bucket"},
		{"part too small", []string{"-s3-bucket", s.bucket, "-s3-part-size", "1000"}, nil, "-s3-part-size must be at least"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			args := append([]string{"-listen", freeAddr(t), "-insecure-tcp", "-metrics-listen", "", "-data-dir", t.TempDir(),
				"-nar-backend", "s3", "-s3-endpoint", s.endpoint, "-s3-path-style"}, tt.args...)
			cmd := exec.CommandContext(ctx, filepath.Join(binDir, "nixcache-index"), args...)
			cmd.Env = append(withoutAWS(os.Environ()), tt.env...)
			out, err := cmd.CombinedOutput()
			if ctx.Err() != nil {
				t.Fatalf("the index did not stop within 60s:\n%s", out)
			}
			if err == nil || !strings.Contains(string(out), tt.want) {
				t.Errorf("index exited with %v, printed:\n%s\nwant an error containing %q", err, out, tt.want)
			}
		})
	}
}

// withoutAWS drops the AWS_ variables of an environment.
func withoutAWS(env []string) []string {
	var out []string
	for _, e := range env {
		if !strings.HasPrefix(e, "AWS_") {
			out = append(out, e)
		}
	}
	return out
}

// TestS3CreateBucket: with -s3-create-bucket the index makes a missing
// bucket at start (docker/s3.yml relies on it) and serves.
func TestS3CreateBucket(t *testing.T) {
	s := startS3(t)
	const bucket = "made-by-the-index"
	addr := freeAddr(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "nixcache-index"), "-listen", addr, "-metrics-listen", "",
		"-data-dir", t.TempDir(), "-insecure-tcp", "-signer-addr", freeAddr(t), "-nar-backend", "s3", "-s3-endpoint", s.endpoint,
		"-s3-path-style", "-s3-bucket", bucket, "-s3-create-bucket")
	cmd.Env = append(withoutAWS(os.Environ()), "AWS_ACCESS_KEY_ID="+s.access, "AWS_SECRET_ACCESS_KEY="+s.secret)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	defer func() { _ = cmd.Process.Signal(syscall.SIGTERM); <-exited }()
	waitFor(t, 60*time.Second, "the index serving", func() bool {
		select {
		case <-exited:
			t.Fatalf("the index exited:\n%s", out.String())
		default:
		}
		return healthServing(ctx, addr)
	})
	if ok, err := s.client.BucketExists(context.Background(), bucket); !ok || err != nil {
		t.Errorf("bucket %s after the index started: exists %v, %v", bucket, ok, err)
	}
}
