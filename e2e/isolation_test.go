package e2e

import (
	"bytes"
	"context"
	"fmt"
	"html"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
)

// otherUser is the user of the host the services do not run as.
const otherUser = "nobody"

// grpcurlFor returns a copy of grpcurl that otherUser can run (the
// worktree's .tools may not be reachable for it).
func grpcurlFor(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "nixcache-grpcurl-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(grpcurlPath(t))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "grpcurl")
	if err := os.WriteFile(path, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// runAs runs name with args as user (runuser, as root) and returns its
// combined output.
func runAs(t *testing.T, user, name string, args ...string) (string, error) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("runuser needs root: the e2e tests run as root in CI")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "runuser", append([]string{"-u", user, "--", name}, args...)...).CombinedOutput()
	return string(out), err
}

// TestOtherUserCannotSign: another user of the host cannot reach the signer
// or the index as make run and the binaries' defaults set them up (Unix
// sockets in a 0700 directory, each 0600): no signature for a fingerprint
// of their choosing, no path published. The services' own user can.
func TestOtherUserCannotSign(t *testing.T) {
	c := newCluster(t)
	grpcurl := grpcurlFor(t)
	fp := `{"fingerprints":["1;/nix/store/1p9q0bz6f22dyxh4lw8xs08p4201vyq4-f;sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw;120;"]}`
	sign := []string{"-plaintext", "-connect-timeout", "3", "-max-time", "10", "-d", fp, c.signerAddr, "nixcache.signer.v1.SignerService/Sign"}
	put := []string{"-plaintext", "-connect-timeout", "3", "-max-time", "10", "-H", "authorization: Bearer " + c.pushToken,
		"-d", `{"info":{"store_path":"/nix/store/1p9q0bz6f22dyxh4lw8xs08p4201vyq4-f"}}`, c.indexAddr, "nixcache.index.v1.IndexService/PutPathInfo"}

	// The control: grpcurl works for the other user, and the services'
	// own user gets a signature.
	if out, err := runAs(t, otherUser, grpcurl, "-version"); err != nil {
		t.Fatalf("%s cannot run grpcurl: %v\n%s", otherUser, err, out)
	}
	if out, err := exec.Command(grpcurl, sign...).CombinedOutput(); err != nil || !strings.Contains(string(out), "e2e-cache-1:") {
		t.Fatalf("the services' user: Sign: %v\n%s", err, out)
	}

	for name, args := range map[string][]string{"signer Sign": sign, "index PutPathInfo": put} {
		out, err := runAs(t, otherUser, grpcurl, args...)
		if err == nil || strings.Contains(out, "e2e-cache-1:") {
			t.Errorf("%s as %s: %v, want refused:\n%s", name, otherUser, err, out)
		} else if !strings.Contains(out, "permission denied") {
			t.Errorf("%s as %s: refused, but not by the socket's permissions:\n%s", name, otherUser, out)
		}
	}
	for _, addr := range []string{c.signerAddr, c.indexAddr} {
		path := strings.TrimPrefix(addr, "unix:")
		for p, want := range map[string]os.FileMode{path: 0o600, filepath.Dir(path): 0o700} {
			if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != want {
				t.Errorf("%s: %v, mode %v, want %o", p, err, fi.Mode(), want)
			}
		}
	}
	if st := httpStatus(t, "GET", c.URL+"/1p9q0bz6f22dyxh4lw8xs08p4201vyq4.narinfo", "", nil); st != http.StatusNotFound {
		t.Errorf("narinfo after the refused PutPathInfo: %d, want 404", st)
	}
}

// TestDefaultsServeNoOpenOracle: started with no -listen, the signer and
// the index serve on Unix sockets under ./data, 0600, and a TCP -listen
// without mutual TLS is refused unless -insecure-tcp, which warns.
func TestDefaultsServeNoOpenOracle(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "keys", "secret.key")
	signerArgs := []string{"-metrics-listen", "", "-key-files", key, "-generate-key", "defaults-1"}
	indexArgs := []string{"-metrics-listen", ""}
	for _, bin := range []struct {
		name string
		args []string
		sock string
	}{
		{"nixcache-signer", signerArgs, "data/signer.sock"},
		{"nixcache-index", indexArgs, "data/index.sock"},
	} {
		t.Run(bin.name, func(t *testing.T) {
			cmd := exec.Command(filepath.Join(binDir, bin.name), bin.args...)
			cmd.Dir = dir
			var out syncWriter
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan struct{})
			go func() { _ = cmd.Wait(); close(exited) }()
			defer func() { _ = cmd.Process.Signal(syscall.SIGTERM); <-exited }()
			sock := filepath.Join(dir, bin.sock)
			waitFor(t, 30*time.Second, bin.name+" serving on "+sock, func() bool {
				select {
				case <-exited:
					t.Fatalf("%s exited:\n%s", bin.name, out.String())
				default:
				}
				return healthServing(context.Background(), "unix:"+sock)
			})
			if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
				t.Errorf("%s: %v, mode %v, want 0600", sock, err, fi.Mode())
			}
		})
	}

	for _, bin := range []struct {
		name string
		args []string
	}{
		{"nixcache-signer", signerArgs},
		{"nixcache-index", append(indexArgs, "-data-dir", t.TempDir())},
	} {
		addr := freeAddr(t)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		out, err := exec.CommandContext(ctx, filepath.Join(binDir, bin.name), append(bin.args, "-listen", addr)...).CombinedOutput()
		cancel()
		if err == nil || !strings.Contains(string(out), "-insecure-tcp") {
			t.Errorf("%s -listen %s (plain TCP): %v, want a refusal naming -insecure-tcp:\n%s", bin.name, addr, err, out)
		}
		cmd := exec.Command(filepath.Join(binDir, bin.name), append(bin.args, "-listen", addr, "-insecure-tcp")...)
		var log syncWriter
		cmd.Stdout, cmd.Stderr = &log, &log
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 30*time.Second, bin.name+" -insecure-tcp serving", func() bool { return healthServing(context.Background(), addr) })
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		if !strings.Contains(log.String(), "plain TCP without mutual TLS") {
			t.Errorf("%s -insecure-tcp: no warning in its log:\n%s", bin.name, log.String())
		}
	}
}

// TestIndexChecksPushItself: a process that reaches the index's socket (a
// gateway taken over) cannot publish without a valid push token: PutNar
// and PutPathInfo straight to the index are refused without a token
// (Unauthenticated) and with a read token (PermissionDenied), and nothing
// is published; with the push token the same calls publish.
func TestIndexChecksPushItself(t *testing.T) {
	c := newCluster(t)
	top, _ := buildClosure(t)
	u := newUpload(t, top)
	conn, err := grpc.NewClient(c.indexAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	idx := indexv1.NewIndexServiceClient(conn)
	withToken := func(token string) context.Context {
		ctx := context.Background()
		if token != "" {
			ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
		}
		return ctx
	}
	putNar := func(token string) (*indexv1.PutNarResponse, error) {
		ctx, cancel := context.WithTimeout(withToken(token), 30*time.Second)
		defer cancel()
		up, err := idx.PutNar(ctx)
		if err != nil {
			return nil, err
		}
		if err := up.Send(&indexv1.PutNarRequest{Msg: &indexv1.PutNarRequest_Header{Header: &indexv1.PutNarHeader{}}}); err != nil && err != io.EOF {
			return nil, err
		}
		if err := up.Send(&indexv1.PutNarRequest{Msg: &indexv1.PutNarRequest_Chunk{Chunk: u.nar}}); err != nil && err != io.EOF {
			return nil, err
		}
		return up.CloseAndRecv()
	}
	info := &indexv1.PathInfo{
		StorePath: u.storePath, NarHash: u.narHash, NarSize: uint64(u.narSize),
		File: &indexv1.NarFile{FileHash: "sha256:" + u.fileHash()},
	}
	putInfo := func(token string) error {
		ctx, cancel := context.WithTimeout(withToken(token), 30*time.Second)
		defer cancel()
		_, err := idx.PutPathInfo(ctx, &indexv1.PutPathInfoRequest{Info: info})
		return err
	}

	for _, tc := range []struct {
		token string
		want  codes.Code
	}{{"", codes.Unauthenticated}, {"not-a-token", codes.Unauthenticated}, {c.readToken, codes.PermissionDenied}} {
		if _, err := putNar(tc.token); status.Code(err) != tc.want {
			t.Errorf("PutNar with token %q: %v, want %v", tc.token, err, tc.want)
		}
		if err := putInfo(tc.token); status.Code(err) != tc.want {
			t.Errorf("PutPathInfo with token %q: %v, want %v", tc.token, err, tc.want)
		}
	}
	narinfo := c.URL + "/" + hashPart(top) + ".narinfo"
	if st := httpStatus(t, "GET", narinfo, "", nil); st != http.StatusNotFound {
		t.Errorf("narinfo after the refused writes: %d, want 404", st)
	}
	if st := httpStatus(t, "HEAD", c.URL+"/nar/"+u.fileHash()+".nar", "", nil); st != http.StatusNotFound {
		t.Errorf("NAR after the refused writes: %d, want 404", st)
	}

	// The control: the push token publishes, straight to the index.
	if _, err := putNar(c.pushToken); err != nil {
		t.Fatalf("PutNar with the push token: %v", err)
	}
	if err := putInfo(c.pushToken); err != nil {
		t.Fatalf("PutPathInfo with the push token: %v", err)
	}
	if st := httpStatus(t, "GET", narinfo, "", nil); st != http.StatusOK {
		t.Errorf("narinfo after the pushed writes: %d, want 200", st)
	}
}

// TestGatewayWithoutSigner: the gateway has no signer address and never
// depends on the signer: with the signer stopped, the gateway is ready and
// its landing page still shows the public key (through the index, as last
// listed); a push then fails at the index (it cannot sign), not at the
// gateway's door.
func TestGatewayWithoutSigner(t *testing.T) {
	c := newCluster(t)
	if strings.Contains(strings.Join(c.args("gateway"), " "), "signer") {
		t.Fatalf("the gateway's flags name the signer: %q", c.args("gateway"))
	}
	out, _ := exec.Command(filepath.Join(binDir, "nixcache-gateway"), "-h").CombinedOutput()
	if !strings.Contains(string(out), "deprecated and ignored") {
		t.Errorf("gateway -h does not say -signer-addr is ignored:\n%s", out)
	}
	keyShown := func(page string) bool { return strings.Contains(html.UnescapeString(page), c.publicKey) }
	if r := httpDo(t, "GET", c.URL+"/", "", nil, nil); r.status != http.StatusOK || !keyShown(r.body) {
		t.Fatalf("landing page: %d, key shown %v", r.status, keyShown(r.body))
	}
	c.stop("signer")
	r := httpDo(t, "GET", c.URL+"/readyz", "", nil, nil)
	if r.status != http.StatusOK || strings.Contains(r.body, "signer") {
		t.Errorf("/readyz with the signer stopped: %d %q, want 200 without a signer dependency", r.status, r.body)
	}
	if r := httpDo(t, "GET", c.URL+"/", "", nil, nil); r.status != http.StatusOK || !keyShown(r.body) {
		t.Errorf("landing page with the signer stopped: %d, key shown %v", r.status, keyShown(r.body))
	}
}

// TestSignerAuditTrail: every signature of a push is in the signer's log
// with its store path, key and caller (the index's pid and uid, as the
// kernel tells them), and counted by key in its /metrics.
func TestSignerAuditTrail(t *testing.T) {
	c := newCluster(t)
	top, closure := buildClosure(t)
	series := `nixcache_signer_signatures_total{key="e2e-cache-1"}`
	before := metric(t, "http://"+c.signerMetrics+"/metrics", series)
	mustNix(t, nixConfig("netrc-file = "+c.netrc(c.pushToken)), "nix", "copy", "--to", c.URL, top)

	if got := metric(t, "http://"+c.signerMetrics+"/metrics", series); got-before != float64(len(closure)) {
		t.Errorf("%s went from %v to %v, want %d more", series, before, got, len(closure))
	}
	indexPID := c.procs["index"].cmd.Process.Pid
	caller := fmt.Sprintf("caller=\"unix peer pid=%d uid=%d ", indexPID, os.Getuid())
	log := readFile(t, filepath.Join(c.dir, "logs", "signer.log"))
	for _, p := range closure {
		found := false
		for _, line := range strings.Split(log, "\n") {
			if strings.Contains(line, "msg=signed") && strings.Contains(line, "store_path="+p+" ") {
				found = true
				if !strings.Contains(line, "keys=[e2e-cache-1]") || !strings.Contains(line, caller) {
					t.Errorf("audit line of %s lacks the key or the index as caller (%s):\n%s", p, caller, line)
				}
			}
		}
		if !found {
			t.Errorf("no audit line for %s in the signer's log", p)
		}
	}
}

// syncWriter collects a process's output for the test to read meanwhile.
type syncWriter struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (w *syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

func (w *syncWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}
