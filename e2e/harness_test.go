package e2e

import (
	"bytes"
	"context"
	"fmt"
	mathrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// binDir holds nixcache-signer, nixcache-index and nixcache-gateway.
var binDir string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if _, err := exec.LookPath("nix"); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: the real Nix client is required (scripts/tools.sh installs it):", err)
		return 1
	}
	binDir = os.Getenv("NIXCACHE_BIN")
	if binDir == "" {
		dir, err := os.MkdirTemp("", "nixcache-e2e-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
			return 1
		}
		defer os.RemoveAll(dir)
		for _, s := range []string{"signer", "index", "gateway"} {
			cmd := exec.Command("go", "build", "-o", filepath.Join(dir, "nixcache-"+s), "../services/"+s)
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				fmt.Fprintf(os.Stderr, "e2e: build %s: %v\n%s", s, err, out)
				return 1
			}
		}
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, "nixcache"), "../cmd/nixcache")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: build nixcache: %v\n%s", err, out)
			return 1
		}
		binDir = dir
	}
	return m.Run()
}

// services in start order.
var services = []string{"signer", "index", "gateway"}

// cluster is one nixcache deployment: the three real binaries, the signer
// and the index on Unix sockets (their defaults; withMutualTLS puts them
// on loopback TCP), the gateway on loopback.
type cluster struct {
	t          *testing.T
	dir        string
	URL        string // the gateway, http://127.0.0.1:PORT
	httpAddr   string
	signerAddr string // unix:PATH, or 127.0.0.1:PORT with mutual TLS
	indexAddr  string // the same
	pushToken  string
	readToken  string
	adminToken string
	publicKey  string // as trusted-public-keys takes it
	procs      map[string]*proc

	// signerMetrics and indexMetrics serve /metrics and /healthz.
	signerMetrics string
	indexMetrics  string
	// extraArgs are added to a service's flags when it starts.
	extraArgs map[string][]string
	// grpcCreds are the credentials of the harness's own health checks
	// of the signer and the index; nil: plain text.
	grpcCreds credentials.TransportCredentials
	// extraEnv are added to a service's environment ("NAME=value").
	extraEnv map[string][]string
}

type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// clusterOption changes a cluster before its services start.
type clusterOption func(*cluster)

// withArgs adds flags to a service.
func withArgs(service string, args ...string) clusterOption {
	return func(c *cluster) { c.extraArgs[service] = append(c.extraArgs[service], args...) }
}

func newCluster(t *testing.T, opts ...clusterOption) *cluster {
	t.Helper()
	dir := t.TempDir()
	sockets := socketDir(t)
	c := &cluster{
		t:          t,
		dir:        dir,
		httpAddr:   freeAddr(t),
		signerAddr: "unix:" + filepath.Join(sockets, "signer.sock"),
		indexAddr:  "unix:" + filepath.Join(sockets, "index.sock"),
		pushToken:  "push-" + randomHex(t, 16),
		readToken:  "read-" + randomHex(t, 16),
		adminToken: "admin-" + randomHex(t, 16),
		procs:      map[string]*proc{},

		// Fresh addresses: the defaults may be taken on this machine.
		signerMetrics: freeAddr(t),
		indexMetrics:  freeAddr(t),
		extraArgs:     map[string][]string{},
		extraEnv:      map[string][]string{},
	}
	c.URL = "http://" + c.httpAddr
	for _, d := range []string{"signer", "index", "logs"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	keygen := exec.Command(filepath.Join(binDir, "nixcache-signer"), "keygen", "e2e-cache-1",
		filepath.Join(dir, "signer", "secret.key"), filepath.Join(dir, "signer", "public.key"))
	if out, err := keygen.CombinedOutput(); err != nil {
		t.Fatalf("keygen: %v\n%s", err, out)
	}
	pub, err := os.ReadFile(filepath.Join(dir, "signer", "public.key"))
	if err != nil {
		t.Fatal(err)
	}
	c.publicKey = strings.TrimSpace(string(pub))
	auth := fmt.Sprintf("# name scopes token\npusher push,read %s\nreader read %s\noperator admin,read %s\n", c.pushToken, c.readToken, c.adminToken)
	if err := os.WriteFile(filepath.Join(dir, "auth"), []byte(auth), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.stopAll()
		if t.Failed() {
			c.dumpLogs()
		}
	})
	for _, o := range opts {
		o(c)
	}
	c.startAll()
	return c
}

func (c *cluster) args(service string) []string {
	common := []string{"-log-format", "text", "-log-level", "debug"}
	switch service {
	case "signer":
		return append(append(common, "-listen", c.signerAddr, "-metrics-listen", c.signerMetrics,
			"-key-files", filepath.Join(c.dir, "signer", "secret.key"),
			"-key-dir", filepath.Join(c.dir, "signer", "keys")), c.extraArgs[service]...)
	case "index":
		// The index checks the push scope of the writes itself: it has
		// the gateway's token file.
		return append(append(common, "-listen", c.indexAddr, "-metrics-listen", c.indexMetrics,
			"-data-dir", filepath.Join(c.dir, "index"), "-signer-addr", c.signerAddr,
			// As make run: the gateway spools uploads into the index's
			// files (tests of streamed uploads turn it off).
			"-upload-spool", "auto",
			"-auth-file", filepath.Join(c.dir, "auth")), c.extraArgs[service]...)
	case "gateway":
		// No narinfo cache: the tests check that what the index does
		// (delete, GC, quarantine, re-sign) shows at once; the cache and
		// its bounds are tested in the gateway, narinfocache_test.go and
		// multigw_test.go. withArgs may turn it on again (the last flag
		// wins).
		common = append(common, "-narinfo-cache-ttl", "0", "-narinfo-cache-max-age", "0")
		return append(append(common, "-listen", c.httpAddr, "-index-addr", c.indexAddr,
			"-auth-file", filepath.Join(c.dir, "auth")), c.extraArgs[service]...)
	}
	panic("unknown service " + service)
}

// start starts one service and waits until it is ready.
func (c *cluster) start(service string) {
	c.t.Helper()
	if p := c.procs[service]; p != nil {
		c.t.Fatalf("%s is already running", service)
	}
	logf, err := os.OpenFile(filepath.Join(c.dir, "logs", service+".log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		c.t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(binDir, "nixcache-"+service), c.args(service)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), c.extraEnv[service]...)
	if err := cmd.Start(); err != nil {
		c.t.Fatalf("start %s: %v", service, err)
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	c.procs[service] = p
	c.waitReady(service, p)
}

func (c *cluster) startAll() {
	for _, s := range services {
		c.start(s)
	}
}

// stop sends SIGTERM and waits for the service to exit.
func (c *cluster) stop(service string) {
	p := c.procs[service]
	if p == nil {
		return
	}
	delete(c.procs, service)
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		c.t.Errorf("%s did not stop within 15s of SIGTERM; killing it", service)
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		c.t.Errorf("%s exited with code %d after SIGTERM", service, code)
	}
}

// kill sends SIGKILL, as a crash or the OOM killer would, and waits for
// the process to be gone; start brings the service back.
func (c *cluster) kill(service string) {
	c.t.Helper()
	p := c.procs[service]
	if p == nil {
		c.t.Fatalf("kill %s: not running", service)
	}
	delete(c.procs, service)
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		c.t.Fatalf("kill %s: %v", service, err)
	}
	<-p.done
}

func (c *cluster) stopAll() {
	for i := len(services) - 1; i >= 0; i-- {
		c.stop(services[i])
	}
}

// waitReady polls until the service answers: gRPC health SERVING for signer
// and index, /healthz for the gateway (/nix-cache-info may need a token).
// It fails the test if the process exits first or 30 s pass.
func (c *cluster) waitReady(service string, p *proc) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ready := func() bool {
		switch service {
		case "gateway":
			resp, err := http.Get(c.URL + "/healthz")
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == http.StatusOK
		default:
			addr := c.signerAddr
			if service == "index" {
				addr = c.indexAddr
			}
			return healthServingWith(ctx, addr, c.grpcCreds)
		}
	}
	// A failed test's logs are dumped by newCluster's cleanup.
	waitFor(c.t, 30*time.Second, service+" ready", func() bool {
		select {
		case <-p.done:
			c.t.Fatalf("%s exited before it was ready", service)
		default:
		}
		return ready()
	})
}

func healthServing(ctx context.Context, addr string) bool {
	return healthServingWith(ctx, addr, nil)
}

// healthServingWith is healthServing over creds (nil: plain text).
func healthServingWith(ctx context.Context, addr string, creds credentials.TransportCredentials) bool {
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return false
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	resp, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
	return err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING
}

func (c *cluster) dumpLogs() {
	for _, s := range services {
		b, err := os.ReadFile(filepath.Join(c.dir, "logs", s+".log"))
		if err != nil {
			continue
		}
		if len(b) > 20000 {
			b = b[len(b)-20000:]
		}
		c.t.Logf("--- %s log (tail) ---\n%s", s, b)
	}
}

// netrc writes a netrc file with the push token and returns its path.
func (c *cluster) netrc(token string) string {
	host, _, _ := net.SplitHostPort(c.httpAddr)
	path := filepath.Join(c.t.TempDir(), "netrc")
	content := fmt.Sprintf("machine %s login nixcache password %s\n", host, token)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		c.t.Fatal(err)
	}
	return path
}

// socketDir makes a directory for the services' sockets, mode 0700 as
// scripts/run-local.sh makes the data directory, with a short path (a
// socket's path is limited to 107 bytes; t.TempDir's carry the test name).
func socketDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "nixcache-sock-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func freeAddr(t *testing.T) string {
	t.Helper()
	// Below Linux's ephemeral range (32768 up): a port from that range may
	// become the local end of an outgoing connection before the service
	// given it binds it.
	for range 100 {
		addr := fmt.Sprintf("127.0.0.1:%d", 10000+mathrand.IntN(22000))
		if l, err := net.Listen("tcp", addr); err == nil {
			l.Close()
			return addr
		}
	}
	t.Fatal("no free port below 32000 in 100 tries")
	return ""
}

func randomHex(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	f, err := os.Open("/dev/urandom")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Read(b); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", b)
}

// nixConfig is a Nix configuration for root on a test machine: no build
// users, no sandbox, no default substituter, no narinfo disk-cache TTLs.
func nixConfig(extra ...string) string {
	lines := append([]string{
		"experimental-features = nix-command",
		"build-users-group =",
		"sandbox = false",
		"substituters =",
		"narinfo-cache-negative-ttl = 0",
		"narinfo-cache-positive-ttl = 0",
	}, extra...)
	return strings.Join(lines, "\n")
}

// nixRun runs a Nix command with config and a fresh HOME and cache
// directory (so no narinfo disk cache carries over between calls).
func nixRun(t *testing.T, config string, name string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	home := t.TempDir()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), "NIX_CONFIG="+config, "HOME="+home, "XDG_CACHE_HOME="+filepath.Join(home, ".cache"))
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	return out.String(), errb.String(), err
}

// mustNix is nixRun that fails the test on error.
func mustNix(t *testing.T, config string, name string, args ...string) string {
	t.Helper()
	out, errOut, err := nixRun(t, config, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, errOut)
	}
	return out
}

// buildClosure builds testdata/closure.nix with a seed unique to the test
// and returns the top path and its closure (every path, top included).
func buildClosure(t *testing.T) (top string, closure []string) {
	t.Helper()
	seed := strings.NewReplacer("/", "-", "_", "-").Replace(strings.ToLower(t.Name())) + "-" + randomHex(t, 4)
	top = strings.TrimSpace(mustNix(t, nixConfig(), "nix-build", "testdata/closure.nix",
		"--argstr", "seed", seed, "--no-out-link"))
	closure = strings.Fields(mustNix(t, nixConfig(), "nix-store", "--query", "--requisites", top))
	if len(closure) != 3 {
		t.Fatalf("closure of %s has %d paths, want 3: %v", top, len(closure), closure)
	}
	return top, closure
}
