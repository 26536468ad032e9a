package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestCompose runs the repository's docker-compose.yml on this machine's
// Docker engine, as a user deploys it, and drives it with the real Nix
// client through the published port: push and substitute, a restart of the
// index, the signer stopped and started again, `down` then `up`, where the
// private key is and is not, the signer out of the gateway's reach and its
// audit trail, the mutual-TLS override (docker/mtls.yml) and the host-store
// override (docker/local-store.yml) switched on.
//
// It needs Docker and docker compose (v2) or docker-compose (1.29); set
// NIXCACHE_COMPOSE to choose the command (e.g. "docker-compose"), or
// NIXCACHE_E2E_SKIP_COMPOSE=1 to skip it on a machine without Docker.
func TestCompose(t *testing.T) {
	p := newComposeProject(t)
	p.up()

	key := p.publicKey()
	if !strings.HasPrefix(key, composeKeyName+":") {
		t.Fatalf("list-keys printed %q, want the key %s:...", key, composeKeyName)
	}
	push := nixConfig("netrc-file = " + p.netrc())
	var tops []string

	steps := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"private key only in the signer", func(t *testing.T) {
			p.assertKeyOnlyInSigner(key)
		}},
		{"signer isolated from the gateway", func(t *testing.T) {
			p.assertSignerIsolated()
		}},
		{"push and substitute", func(t *testing.T) {
			top, closure := buildClosure(t)
			p.mustNix(push, "nix", "copy", "--to", p.URL+"?compression=zstd", top)
			tops = append(tops, top)
			p.assertServed(key, tops...)
			p.assertAuditTrail(closure, `"caller":"unix peer pid=`)
		}},
		{"gateway co-located, read-only", func(t *testing.T) {
			p.assertGatewayReadsNars()
		}},
		{"restart index", func(t *testing.T) {
			p.compose("restart", "index")
			p.waitHealthy("index")
			// Reads come back by themselves: no restart of the gateway.
			p.waitStatus("GET", p.URL+"/"+hashPart(tops[0])+".narinfo", http.StatusOK, 60*time.Second)
			p.assertServed(key, tops...)
			top, _ := buildClosure(t)
			p.mustNix(push, "nix", "copy", "--to", p.URL+"?compression=zstd", top)
			tops = append(tops, top)
			p.assertServed(key, tops...)
		}},
		{"signer stopped", func(t *testing.T) {
			p.compose("stop", "signer")
			// What was signed is still served, with signatures that verify.
			p.assertServed(key, tops...)

			// A new push is refused at once with 503, not a hang or a 500.
			top, closure := buildClosure(t)
			leaf := newUpload(t, pathNamed(t, closure, "-leaf-"))
			if st, body := p.put("nar/"+leaf.fileHash()+".nar", leaf.nar, ""); st/100 != 2 {
				t.Fatalf("PUT NAR with the signer stopped: %d %q (storing a NAR needs no signer)", st, body)
			}
			start := time.Now()
			st, body := p.put(hashPart(leaf.storePath)+".narinfo", []byte(leaf.narinfo()), "text/x-nix-narinfo")
			if st != http.StatusServiceUnavailable || !strings.Contains(strings.ToLower(body), "signer") {
				t.Errorf("PUT narinfo with the signer stopped: %d %q, want 503 naming the signer", st, body)
			}
			if d := time.Since(start); d > 20*time.Second {
				t.Errorf("PUT narinfo with the signer stopped took %v", d)
			}
			// One attempt: Nix 2.8 retries a refused narinfo PUT without its
			// body, and the retry then waits for the server until
			// stalled-download-timeout (300 s).
			_, stderr, err := p.nix(time.Minute, push+"\ndownload-attempts = 1", "nix", "copy", "--to", p.URL, top)
			if err == nil {
				t.Fatal("nix copy --to succeeded with the signer stopped")
			}
			if !strings.Contains(stderr, "503") {
				t.Errorf("nix copy --to failed, but its message does not say 503:\n%s", stderr)
			}

			// Started again, pushing works again by itself.
			p.compose("start", "signer")
			p.waitHealthy("signer")
			p.waitPutStatus(hashPart(leaf.storePath)+".narinfo", []byte(leaf.narinfo()), "text/x-nix-narinfo", 90*time.Second)
			p.mustNix(push, "nix", "copy", "--to", p.URL+"?compression=zstd", top)
			tops = append(tops, top)
			p.assertServed(key, tops...)
		}},
		{"down then up", func(t *testing.T) {
			p.compose("down")
			p.up()
			if again := p.publicKey(); again != key {
				t.Fatalf("after down and up the signer has key %q, before %q", again, key)
			}
			p.assertServed(key, tops...)
		}},
		{"mutual TLS override", func(t *testing.T) {
			p.withMutualTLS()
			p.assertServed(key, tops...)
			top, closure := buildClosure(t)
			p.mustNix(push, "nix", "copy", "--to", p.URL+"?compression=zstd", top)
			tops = append(tops, top)
			p.assertServed(key, tops...)
			p.assertAuditTrail(closure, `"caller":"tls client CN=nixcache-index"`)
			p.assertSignerIsolated()
			// Control: the signer answers the index's certificate (it
			// takes no other but its own: -tls-client-names).
			if out, err := exec.Command("docker", "exec", p.container("index"),
				"/nixcache-index", "healthcheck", "-addr", "signer:5010").CombinedOutput(); err != nil {
				t.Errorf("from the index, the signer's health check over mutual TLS: %v\n%s", err, out)
			}
		}},
		{"host store override", func(t *testing.T) {
			p.assertServesHostStore(key, tops)
		}},
	}
	for _, s := range steps {
		start := time.Now()
		ok := t.Run(s.name, func(t *testing.T) {
			p.t = t
			s.run(t)
		})
		p.t = t
		t.Logf("%s: %v", s.name, time.Since(start).Round(time.Millisecond))
		if !ok {
			return
		}
	}
}

const composeKeyName = "e2e-compose-1"

// composeProject is one deployment of docker-compose.yml under a project
// name of its own, with its own port, token file, volumes and image tag.
type composeProject struct {
	t        *testing.T
	root     string   // the repository: docker-compose.yml, Dockerfile
	command  []string // docker compose, or docker-compose
	args     []string // -p NAME -f FILE... --env-file FILE
	env      []string
	name     string
	URL      string // the gateway's published port, http://127.0.0.1:PORT
	authFile string
}

func newComposeProject(t *testing.T) *composeProject {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return newComposeProjectAt(t, root, binDir)
}

// newComposeProjectAt is newComposeProject with the compose files and
// Dockerfile of the tree root and the binaries in bin.
func newComposeProjectAt(t *testing.T, root, bin string) *composeProject {
	t.Helper()
	command := composeCommand(t)
	dir := t.TempDir()
	name := "nixcachee2e" + randomHex(t, 4)
	httpAddr := freeAddr(t)
	_, port, _ := net.SplitHostPort(httpAddr)
	p := &composeProject{
		t:        t,
		root:     root,
		command:  command,
		name:     name,
		URL:      "http://" + httpAddr,
		authFile: filepath.Join(dir, "secrets", "tokens"),
	}
	// An empty env file: a .env beside docker-compose.yml is the user's.
	envFile := filepath.Join(dir, "empty.env")
	if err := os.WriteFile(envFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	p.args = []string{"-p", name, "-f", filepath.Join(root, "docker-compose.yml")}
	if override := p.buildContextOverride(dir, bin); override != "" {
		p.args = append(p.args, "-f", override)
	}
	p.args = append(p.args, "--env-file", envFile)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "NIXCACHE_") && !strings.HasPrefix(kv, "COMPOSE_") {
			p.env = append(p.env, kv)
		}
	}
	p.env = append(p.env,
		"NIXCACHE_HTTP_BIND=127.0.0.1",
		"NIXCACHE_HTTP_PORT="+port,
		"NIXCACHE_AUTH_FILE="+p.authFile,
		"NIXCACHE_KEY_NAME="+composeKeyName,
		"NIXCACHE_IMAGE_TAG="+name,
		"NIXCACHE_HEALTHCHECK_INTERVAL=1s",
		"NIXCACHE_LOG_LEVEL=debug",
	)

	// The token file, made by the script docs/deploy.md tells users to run.
	mkAuth := exec.Command(filepath.Join(root, "docker", "init-auth.sh"))
	mkAuth.Env = p.env
	if out, err := mkAuth.CombinedOutput(); err != nil {
		t.Fatalf("docker/init-auth.sh: %v\n%s", err, out)
	}

	t.Cleanup(func() {
		if t.Failed() {
			if out, _, err := p.run(time.Minute, "logs", "--no-color", "--tail=200"); err == nil {
				t.Logf("--- docker compose logs (tail) ---\n%s", out)
			}
		}
		// Containers, networks, volumes and the images built for this run.
		if out, errOut, err := p.run(3*time.Minute, "down", "-v", "--remove-orphans", "--rmi", "all", "-t", "10"); err != nil {
			t.Errorf("compose down: %v\n%s%s", err, out, errOut)
		}
	})
	start := time.Now()
	p.compose("build")
	t.Logf("compose build: %v", time.Since(start).Round(time.Millisecond))
	return p
}

// composeCommand is the compose command to test with: $NIXCACHE_COMPOSE,
// else `docker compose` (v2) when it works, else docker-compose (v1).
func composeCommand(t *testing.T) []string {
	t.Helper()
	if os.Getenv("NIXCACHE_E2E_SKIP_COMPOSE") == "1" {
		t.Skip("NIXCACHE_E2E_SKIP_COMPOSE=1")
	}
	if _, err := exec.LookPath("docker"); err != nil {
		t.Fatalf("the compose test needs Docker (or NIXCACHE_E2E_SKIP_COMPOSE=1): %v", err)
	}
	if out, err := exec.Command("docker", "info", "--format", "{{.ServerVersion}}").CombinedOutput(); err != nil {
		t.Fatalf("the compose test needs a running Docker engine: docker info: %v\n%s", err, out)
	}
	if c := strings.Fields(os.Getenv("NIXCACHE_COMPOSE")); len(c) > 0 {
		return c
	}
	if exec.Command("docker", "compose", "version").Run() == nil {
		return []string{"docker", "compose"}
	}
	if _, err := exec.LookPath("docker-compose"); err == nil {
		return []string{"docker-compose"}
	}
	t.Fatal("the compose test needs `docker compose` or docker-compose (Debian: apt-get install docker-compose)")
	return nil
}

// buildContextOverride returns a compose file that points the builds at a
// copy of the build context holding the binaries under test, when those are
// not the repository's bin/ (which docker-compose.yml builds from); else "".
func (p *composeProject) buildContextOverride(dir, bin string) string {
	t := p.t
	bin, err := filepath.Abs(bin)
	if err != nil {
		t.Fatal(err)
	}
	if bin == filepath.Join(p.root, "bin") {
		return ""
	}
	ctx := filepath.Join(dir, "context")
	copyFile := func(src, dst string, mode fs.FileMode) {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, b, mode); err != nil {
			t.Fatal(err)
		}
	}
	copyFile(filepath.Join(p.root, "Dockerfile"), filepath.Join(ctx, "Dockerfile"), 0o644)
	copyFile(filepath.Join(p.root, ".dockerignore"), filepath.Join(ctx, ".dockerignore"), 0o644)
	err = filepath.WalkDir(filepath.Join(p.root, "docker"), func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(p.root, path)
		if err != nil {
			return err
		}
		copyFile(path, filepath.Join(ctx, rel), 0o644)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	b.WriteString("services:\n")
	for _, s := range services {
		copyFile(filepath.Join(bin, "nixcache-"+s), filepath.Join(ctx, "bin", "nixcache-"+s), 0o755)
		fmt.Fprintf(&b, "  %s:\n    build:\n      context: %s\n", s, ctx)
	}
	override := filepath.Join(dir, "build-context.yml")
	if err := os.WriteFile(override, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return override
}

// withFile adds a compose file to the project (after the others) and
// settings as .env lines would.
func (p *composeProject) withFile(file string, env ...string) {
	i := slices.Index(p.args, "--env-file")
	p.args = slices.Insert(p.args, i, "-f", file)
	p.env = append(p.env, env...)
}

// assertServesHostStore switches the host-store override on, with the
// host's nix-daemon on its usual socket (started for the test when none
// runs), as docs/deploy.md tells: a closure built on the host and never
// pushed is then substituted from the cache, trusting only its key, and
// the gateway dumps the NARs itself (the index streams none); what was
// pushed before is still served.
func (p *composeProject) assertServesHostStore(key string, pushed []string) {
	t := p.t
	t.Helper()
	socket := startNixDaemonOn(t, "/nix/var/nix/daemon-socket/socket")
	st, err := os.Stat(filepath.Dir(socket))
	if err != nil {
		t.Fatal(err)
	}
	gid := st.Sys().(*syscall.Stat_t).Gid
	p.withFile(filepath.Join(p.root, "docker", "local-store.yml"), fmt.Sprintf("NIXCACHE_NIX_SOCKET_GID=%d", gid))
	p.up()

	top, closure := buildClosure(t)
	for _, path := range closure {
		p.waitStatus("GET", p.URL+"/"+hashPart(path)+".narinfo", http.StatusOK, time.Minute)
	}
	getNars := `grpc_client_handled_total{grpc_code="OK",grpc_method="GetNar",grpc_service="nixcache.index.v1.IndexService",grpc_type="server_stream"}`
	streamed := metric(t, p.URL+"/metrics", getNars)
	local := pathInfos(t, nixConfig(), "--recursive", top)
	store := filepath.Join(t.TempDir(), "store")
	p.mustNix(nixConfig("trusted-public-keys = "+key), "nix", "copy", "--from", p.URL, "--to", store, top)
	copied := p.pathInfos("--store", store, "--recursive", top)
	for _, path := range closure {
		if copied[path].NarHash != local[path].NarHash {
			t.Errorf("%s: substituted NarHash %q, host %q", path, copied[path].NarHash, local[path].NarHash)
		}
	}
	if n := metric(t, p.URL+"/metrics", getNars) - streamed; n != 0 {
		t.Errorf("the index streamed %v NARs of host paths; the gateway should have dumped them (NIXCACHE_LOCAL_STORE_DIR)", n)
	}
	p.assertServed(key, pushed...)
}

// run runs one compose command, killed after timeout, and returns what it
// printed on stdout and on stderr.
func (p *composeProject) run(timeout time.Duration, args ...string) (stdout, stderr string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	argv := append(append(append([]string{}, p.command[1:]...), p.args...), args...)
	cmd := exec.CommandContext(ctx, p.command[0], argv...)
	cmd.Dir = p.root
	cmd.Env = p.env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("no result within %v", timeout)
	}
	return out.String(), errb.String(), err
}

// compose runs a compose command and returns its stdout; it fails the test
// if the command fails.
func (p *composeProject) compose(args ...string) string {
	p.t.Helper()
	out, errOut, err := p.run(5*time.Minute, args...)
	if err != nil {
		p.t.Fatalf("%s %s: %v\n%s%s", strings.Join(p.command, " "), strings.Join(args, " "), err, out, errOut)
	}
	return out
}

// up starts the project and waits until every service is healthy.
func (p *composeProject) up() {
	p.t.Helper()
	start := time.Now()
	p.compose("up", "-d")
	p.waitHealthy(services...)
	p.t.Logf("compose up, all healthy: %v", time.Since(start).Round(time.Millisecond))
}

// container is the id of a service's container.
func (p *composeProject) container(service string) string {
	p.t.Helper()
	id := strings.TrimSpace(p.compose("ps", "-q", service))
	if id == "" || strings.ContainsAny(id, " \n") {
		p.t.Fatalf("compose ps -q %s: %q, want one container id", service, id)
	}
	return id
}

// docker runs a docker command and returns its stdout; it fails the test
// if the command fails.
func (p *composeProject) docker(args ...string) string {
	p.t.Helper()
	out, err := exec.Command("docker", args...).Output()
	if err != nil {
		var stderr []byte
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			stderr = ee.Stderr
		}
		p.t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, stderr)
	}
	return string(out)
}

// waitHealthy polls Docker's health status of the services' containers
// until all are healthy; a container that stops or turns unhealthy, or two
// minutes passing, fails the test.
func (p *composeProject) waitHealthy(services ...string) {
	p.t.Helper()
	ids := map[string]string{}
	for _, s := range services {
		ids[s] = p.container(s)
	}
	deadline := time.Now().Add(2 * time.Minute)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		waiting := []string{}
		for _, s := range services {
			state := strings.TrimSpace(p.docker("inspect", "-f", "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}", ids[s]))
			switch state {
			case "running healthy":
			case "running starting", "running", "created", "restarting starting":
				waiting = append(waiting, s+" ("+state+")")
			default:
				p.t.Fatalf("%s is %q while waiting for it to be healthy", s, state)
			}
		}
		if len(waiting) == 0 {
			return
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("not healthy after 2 minutes: %v", waiting)
		}
		<-tick.C
	}
}

// publicKey reads the cache's public key from the running signer.
func (p *composeProject) publicKey() string {
	p.t.Helper()
	out := strings.TrimSpace(p.compose("exec", "-T", "signer", "/nixcache-signer", "list-keys"))
	if strings.Contains(out, "\n") {
		p.t.Fatalf("list-keys printed more than one key: %q", out)
	}
	return out
}

// netrc writes a netrc file with the push token from the token file.
func (p *composeProject) netrc() string {
	p.t.Helper()
	path := filepath.Join(p.t.TempDir(), "netrc")
	content := fmt.Sprintf("machine 127.0.0.1 login nixcache password %s\n", p.pushToken())
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		p.t.Fatal(err)
	}
	return path
}

func (p *composeProject) pushToken() string {
	p.t.Helper()
	for _, line := range strings.Split(readFile(p.t, p.authFile), "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && !strings.HasPrefix(f[0], "#") && strings.Contains(f[1], "push") {
			return f[2]
		}
	}
	p.t.Fatalf("no push token in %s", p.authFile)
	return ""
}

// put PUTs body to the cache with the push token, bounded in time, and
// returns the status and body of the answer.
func (p *composeProject) put(path string, body []byte, contentType string) (int, string) {
	p.t.Helper()
	req, err := http.NewRequest("PUT", p.URL+"/"+path, bytes.NewReader(body))
	if err != nil {
		p.t.Fatal(err)
	}
	req.SetBasicAuth("nixcache", p.pushToken())
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	client := &http.Client{Timeout: 60 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		p.t.Fatalf("PUT %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// waitStatus polls a request until it answers want.
func (p *composeProject) waitStatus(method, url string, want int, limit time.Duration) {
	p.t.Helper()
	client := &http.Client{Timeout: 10 * time.Second}
	p.poll(limit, fmt.Sprintf("%s %s to answer %d", method, url, want), func() string {
		req, err := http.NewRequest(method, url, nil)
		if err != nil {
			p.t.Fatal(err)
		}
		resp, err := client.Do(req)
		if err != nil {
			return err.Error()
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			return resp.Status
		}
		return ""
	})
}

// waitPutStatus polls a PUT until it succeeds (2xx).
func (p *composeProject) waitPutStatus(path string, body []byte, contentType string, limit time.Duration) {
	p.t.Helper()
	p.poll(limit, "PUT "+path+" to succeed", func() string {
		if st, b := p.put(path, body, contentType); st/100 != 2 {
			return fmt.Sprintf("%d %s", st, b)
		}
		return ""
	})
}

// poll calls try until it returns "" (done), failing the test with try's
// last answer after limit.
func (p *composeProject) poll(limit time.Duration, what string, try func() string) {
	p.t.Helper()
	start := time.Now()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		last := try()
		if last == "" {
			p.t.Logf("waited %v for %s", time.Since(start).Round(time.Millisecond), what)
			return
		}
		if time.Since(start) > limit {
			p.t.Fatalf("waited %v for %s; last answer: %s", limit, what, last)
		}
		<-tick.C
	}
}

// assertServed substitutes the closures of tops from the cache into a fresh
// store that trusts only key: every path must arrive, with the host's NAR
// hash.
func (p *composeProject) assertServed(key string, tops ...string) {
	t := p.t
	t.Helper()
	store := filepath.Join(t.TempDir(), "store")
	p.mustNix(nixConfig("trusted-public-keys = "+key), "nix", append([]string{"copy", "--from", p.URL, "--to", store}, tops...)...)
	local := p.pathInfos(append([]string{"--recursive"}, tops...)...)
	copied := p.pathInfos(append([]string{"--store", store, "--recursive"}, tops...)...)
	if len(local) == 0 || len(copied) != len(local) {
		t.Fatalf("fresh store has %d paths of the closures, want %d", len(copied), len(local))
	}
	keyName, _, _ := strings.Cut(key, ":")
	remote := p.pathInfos(append([]string{"--store", p.URL, "--recursive"}, tops...)...)
	for path, want := range local {
		if got := copied[path]; got.NarHash != want.NarHash {
			t.Errorf("%s: fresh store has NarHash %q, host %q", path, got.NarHash, want.NarHash)
		}
		if !hasSigBy(remote[path].Signatures, keyName) {
			t.Errorf("%s: the cache serves it without a signature by %s: %v", path, keyName, remote[path].Signatures)
		}
	}
}

// nix runs a Nix command like nixRun, killed after limit: a cache that
// stops answering fails the test instead of hanging it.
func (p *composeProject) nix(limit time.Duration, config string, name string, args ...string) (stdout, stderr string, err error) {
	p.t.Helper()
	home := p.t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), "NIX_CONFIG="+config, "HOME="+home, "XDG_CACHE_HOME="+filepath.Join(home, ".cache"))
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("no result within %v", limit)
	}
	return out.String(), errb.String(), err
}

// pathInfos is what `nix path-info --json` prints, by path.
func (p *composeProject) pathInfos(args ...string) map[string]pathInfo {
	p.t.Helper()
	out := p.mustNix(nixConfig(), "nix", append([]string{"path-info", "--json"}, args...)...)
	var infos []pathInfo
	if err := json.Unmarshal([]byte(out), &infos); err != nil {
		p.t.Fatalf("path-info output: %v\n%s", err, out)
	}
	m := map[string]pathInfo{}
	for _, i := range infos {
		m[i.Path] = i
	}
	return m
}

// mustNix is nix with a two-minute limit that fails the test on error.
func (p *composeProject) mustNix(config string, name string, args ...string) string {
	p.t.Helper()
	out, errOut, err := p.nix(2*time.Minute, config, name, args...)
	if err != nil {
		p.t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, errOut)
	}
	return out
}

// dockerMount is an entry of `docker inspect`'s Mounts.
type dockerMount struct {
	Type        string
	Name        string
	Source      string
	Destination string
	RW          bool
}

// assertGatewayReadsNars: the gateway mounts the index's volume read-only
// and has served the NARs just substituted from it, without complaining
// that it could not read them (it would then have streamed them from the
// index, and said so in its log).
func (p *composeProject) assertGatewayReadsNars() {
	t := p.t
	t.Helper()
	var mounts []dockerMount
	if err := json.Unmarshal([]byte(p.docker("inspect", "-f", "{{json .Mounts}}", p.container("gateway"))), &mounts); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, m := range mounts {
		if m.Name == p.name+"_index-data" {
			found = true
			if m.RW || m.Destination != "/var/lib/nixcache/index" {
				t.Errorf("the gateway mounts the index's volume at %s, writable %v; want /var/lib/nixcache/index read-only", m.Destination, m.RW)
			}
		}
	}
	if !found {
		t.Fatalf("the gateway does not mount the index's volume: %+v", mounts)
	}
	if logs := p.compose("logs", "--no-color", "gateway"); strings.Contains(logs, "-nar-dir") {
		t.Errorf("the gateway could not serve NAR files from the index's volume:\n%s", logs)
	}
}

const signerKeyDir = "/var/lib/nixcache/signer"

// assertKeyOnlyInSigner: the signer's key volume is mounted by the signer
// alone; the key file is there and nowhere in the index or the gateway.
func (p *composeProject) assertKeyOnlyInSigner(key string) {
	t := p.t
	t.Helper()
	keyVolume := p.name + "_signer-keys"
	for _, s := range services {
		id := p.container(s)
		var mounts []dockerMount
		if err := json.Unmarshal([]byte(p.docker("inspect", "-f", "{{json .Mounts}}", id)), &mounts); err != nil {
			t.Fatal(err)
		}
		hasKeyVolume := false
		for _, m := range mounts {
			if m.Name == keyVolume || m.Destination == signerKeyDir {
				hasKeyVolume = true
			}
		}
		if hasKeyVolume != (s == "signer") {
			t.Errorf("%s mounts the key volume: %v, want %v (mounts %+v)", s, hasKeyVolume, s == "signer", mounts)
		}
		// docker cp reads the container's file system, mounts included.
		dst := filepath.Join(t.TempDir(), "secret.key")
		out, err := exec.Command("docker", "cp", id+":"+signerKeyDir+"/secret.key", dst).CombinedOutput()
		switch {
		case s == "signer" && err != nil:
			t.Errorf("docker cp the key out of the signer: %v\n%s", err, out)
		case s == "signer":
			if secret := readFile(t, dst); !strings.HasPrefix(secret, composeKeyName+":") {
				t.Errorf("the signer's key file does not hold the key %s", composeKeyName)
			}
			pub, err := exec.Command("docker", "cp", id+":"+signerKeyDir+"/secret.key.pub", "-").Output()
			if err != nil || !bytes.Contains(pub, []byte(key)) {
				t.Errorf("the signer's public key file does not hold the key list-keys printed (%v)", err)
			}
		case err == nil:
			t.Errorf("%s has the signer's key file at %s", s, signerKeyDir+"/secret.key")
		}
		if s != "signer" && bytes.Contains([]byte(p.docker("inspect", id)), []byte(keyVolume)) {
			t.Errorf("docker inspect of %s names the key volume %s", s, keyVolume)
		}
	}
}

// assertSignerIsolated: the signer publishes no port and sits only on the
// internal network "signing", which the gateway is not on; only the index
// mounts the signer's socket volume; from inside the gateway the name
// "signer" does not even resolve, while from inside the index it does.
func (p *composeProject) assertSignerIsolated() {
	t := p.t
	t.Helper()
	type container struct {
		HostConfig struct {
			PortBindings map[string]any
		}
		NetworkSettings struct {
			Ports    map[string][]any
			Networks map[string]struct{ IPAddress string }
		}
		Mounts []dockerMount
	}
	inspect := func(service string) container {
		var c container
		if err := json.Unmarshal([]byte(p.docker("inspect", "-f", "{{json .}}", p.container(service))), &c); err != nil {
			t.Fatal(err)
		}
		return c
	}
	signer, index, gateway := inspect("signer"), inspect("index"), inspect("gateway")
	if len(signer.HostConfig.PortBindings) > 0 {
		t.Errorf("the signer has port bindings: %v", signer.HostConfig.PortBindings)
	}
	for port, bindings := range signer.NetworkSettings.Ports {
		if len(bindings) > 0 {
			t.Errorf("the signer's port %s is published: %v", port, bindings)
		}
	}
	signing := p.name + "_signing"
	if len(signer.NetworkSettings.Networks) != 1 {
		t.Errorf("the signer is on networks %v, want only %s", signer.NetworkSettings.Networks, signing)
	}
	for name := range signer.NetworkSettings.Networks {
		if name != signing {
			t.Errorf("the signer is on network %s, want only %s", name, signing)
		}
		if internal := strings.TrimSpace(p.docker("network", "inspect", "-f", "{{.Internal}}", name)); internal != "true" {
			t.Errorf("the signer's network %s is not internal", name)
		}
	}
	if _, ok := index.NetworkSettings.Networks[signing]; !ok {
		t.Errorf("the index is not on %s: %v", signing, index.NetworkSettings.Networks)
	}
	for name := range gateway.NetworkSettings.Networks {
		if _, shared := signer.NetworkSettings.Networks[name]; shared {
			t.Errorf("the gateway shares network %s with the signer", name)
		}
	}
	socketVolume := p.name + "_signer-socket"
	for service, c := range map[string]container{"index": index, "gateway": gateway} {
		mounted := slices.ContainsFunc(c.Mounts, func(m dockerMount) bool { return m.Name == socketVolume })
		if mounted != (service == "index") {
			t.Errorf("%s mounts the signer's socket volume: %v, want %v", service, mounted, service == "index")
		}
	}

	// The gateway's health check subcommand, pointed at the signer's
	// name, tells whether the name resolves there: the images have no
	// shell and no other tool.
	out, err := exec.Command("docker", "exec", p.container("gateway"), "/nixcache-gateway", "healthcheck",
		"-addr", "signer:5010", "-timeout", "15s").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "lookup signer") {
		t.Errorf("from the gateway, signer:5010: %v, want the name not to resolve:\n%s", err, out)
	}
	// Control: from the index the name resolves (and, over mutual TLS, the
	// signer answers the index's certificate).
	out, _ = exec.Command("docker", "exec", p.container("index"), "/nixcache-index", "healthcheck",
		"-addr", "signer:5010", "-timeout", "15s").CombinedOutput()
	if strings.Contains(string(out), "lookup signer") {
		t.Errorf("from the index, the signer's name does not resolve:\n%s", out)
	}
}

// assertAuditTrail: the signer's log has an audit line for every path of
// closure, naming the caller as want says (the index's uid on the socket,
// or its certificate).
func (p *composeProject) assertAuditTrail(closure []string, want string) {
	t := p.t
	t.Helper()
	logs := p.compose("logs", "--no-color", "signer")
	for _, path := range closure {
		found := false
		for _, line := range strings.Split(logs, "\n") {
			if strings.Contains(line, `"msg":"signed"`) && strings.Contains(line, `"store_path":"`+path+`"`) {
				found = true
				if !strings.Contains(line, want) {
					t.Errorf("audit line of %s lacks %s:\n%s", path, want, line)
				}
			}
		}
		if !found {
			t.Errorf("no audit line for %s in the signer's log", path)
		}
	}
}

// withMutualTLS switches docker/mtls.yml on, with certificates made by
// scripts/gen-certs.sh and given to the containers' user, as docs/deploy.md
// tells, and brings the project up again.
func (p *composeProject) withMutualTLS() {
	t := p.t
	t.Helper()
	// Beside the token file: the project's directory lives until after
	// the final `down`, which reads the compose files' secrets too.
	certs := filepath.Join(filepath.Dir(filepath.Dir(p.authFile)), "tls")
	if out, err := exec.Command(filepath.Join(p.root, "scripts", "gen-certs.sh"), certs).CombinedOutput(); err != nil {
		t.Fatalf("scripts/gen-certs.sh: %v\n%s", err, out)
	}
	entries, err := os.ReadDir(certs)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if err := os.Chown(filepath.Join(certs, e.Name()), 65532, 65532); err != nil {
			t.Fatal(err)
		}
	}
	p.withFile(filepath.Join(p.root, "docker", "mtls.yml"), "NIXCACHE_TLS_DIR="+certs)
	p.up()
}

// pathNamed is the path of closure whose name contains part.
func pathNamed(t *testing.T, closure []string, part string) string {
	t.Helper()
	for _, p := range closure {
		if strings.Contains(p, part) {
			return p
		}
	}
	t.Fatalf("no path with %q in %v", part, closure)
	return ""
}
