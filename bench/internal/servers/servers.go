// Package servers runs the servers the benchmark compares, on loopback: a
// nixcache deployment (the three real binaries), nginx serving static
// binary caches, and a nix-daemon on a private socket.
package servers

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	mathrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/nixcache/nixcache/bench/internal/proc"
)

// readyTimeout bounds the start of any server.
const readyTimeout = 60 * time.Second

// FreeAddr returns a loopback address with a port free at the moment,
// below Linux's ephemeral range (32768 up): a port from that range may
// become the local end of an outgoing connection before the server that
// was given it binds it ("address already in use" failed a run).
func FreeAddr() (string, error) {
	for range 100 {
		addr := fmt.Sprintf("127.0.0.1:%d", 10000+mathrand.IntN(22000))
		if l, err := net.Listen("tcp", addr); err == nil {
			l.Close()
			return addr, nil
		}
	}
	return "", errors.New("find a free port: 100 tries below 32000 all in use")
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Nixcache is one nixcache deployment: signer, index and gateway.
type Nixcache struct {
	Name       string // e.g. "nixcache-none"
	Dir        string
	URL        string // the gateway, http://127.0.0.1:PORT
	HTTPAddr   string
	IndexAddr  string
	SignerAddr string
	PushToken  string
	PublicKey  string // as trusted-public-keys takes it
	SecretKey  string // the key file

	Signer, Index, Gateway *proc.Proc
	// IndexStartup is how long the index took from exec to serving.
	IndexStartup time.Duration
	// IndexReadyTimeout, when set, bounds StartIndex instead of the
	// default (a start that migrates a large catalogue takes longer).
	IndexReadyTimeout time.Duration
	// CoLocated: the gateway reads the index's nars/ itself (-nar-dir),
	// the fastest documented deployment; false when the gateway predates
	// the flag (a -ref before it) or it was not asked for.
	CoLocated bool
	// StreamGateway, when asked for (NixcacheOptions.StreamGateway), is a
	// second gateway in front of the same index without -nar-dir: every
	// NAR streamed through the index, as a remote index or S3 would; at
	// StreamURL.
	StreamGateway *proc.Proc
	StreamURL     string

	bin       string
	indexArgs []string
	// spool is the index's upload spool socket, shared with the gateway
	// (co-located, when the binaries have -upload-spool); "" for none.
	spool string
	// insecureTCP: the binaries serve Unix sockets by default and need
	// -insecure-tcp for the bench's loopback addresses (and the index
	// the token file).
	insecureTCP bool
}

// NixcacheOptions configure StartNixcache.
type NixcacheOptions struct {
	Bin  string // directory of nixcache-{signer,index,gateway}
	Dir  string // data and logs, made if missing
	Name string
	// IndexArgs are added to the index's flags (the local-store mode).
	IndexArgs []string
	// LogLevel of the three services; "" is their default (info).
	LogLevel string
	// CoLocated gives the gateway -nar-dir (the index's nars/), and both
	// the index's upload spool socket (-upload-spool), when they have the
	// flags.
	CoLocated bool
	// LocalStoreDir gives the gateway -local-store-dir (it dumps the host
	// store's NARs itself) when it has the flag.
	LocalStoreDir string
	// StreamGateway starts a second gateway without -nar-dir (see
	// Nixcache.StreamGateway).
	StreamGateway bool
}

// StartNixcache starts the three services and waits until each is ready.
func StartNixcache(ctx context.Context, o NixcacheOptions) (*Nixcache, error) {
	n := &Nixcache{Name: o.Name, Dir: o.Dir, bin: o.Bin, indexArgs: o.IndexArgs, PushToken: "push-" + randomHex(16)}
	if o.CoLocated && hasFlag(o.Bin, "index", "-upload-spool") {
		// The gateway writes uploads into files the index hands it, as
		// make run has it (one user for the three services).
		n.spool = filepath.Join(o.Dir, "upload-spool.sock")
	}
	for _, d := range []string{"signer", "index", "logs"} {
		if err := os.MkdirAll(filepath.Join(o.Dir, d), 0o700); err != nil {
			return nil, fmt.Errorf("start %s: %w", o.Name, err)
		}
	}
	var err error
	for _, a := range []*string{&n.HTTPAddr, &n.IndexAddr, &n.SignerAddr} {
		if *a, err = FreeAddr(); err != nil {
			return nil, err
		}
	}
	n.URL = "http://" + n.HTTPAddr
	n.SecretKey = filepath.Join(o.Dir, "signer", "secret.key")
	pubPath := filepath.Join(o.Dir, "signer", "public.key")
	if _, err := os.Stat(n.SecretKey); err != nil {
		out, err := exec.Command(filepath.Join(o.Bin, "nixcache-signer"), "keygen", "bench-1", n.SecretKey, pubPath).CombinedOutput()
		if err != nil {
			return nil, fmt.Errorf("start %s: keygen: %w\n%s", o.Name, err, out)
		}
	}
	pub, err := os.ReadFile(pubPath)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", o.Name, err)
	}
	n.PublicKey = strings.TrimSpace(string(pub))
	auth := fmt.Sprintf("bench push,read %s\n", n.PushToken)
	if err := os.WriteFile(filepath.Join(o.Dir, "auth"), []byte(auth), 0o600); err != nil {
		return nil, fmt.Errorf("start %s: %w", o.Name, err)
	}
	common := []string{"-log-format", "json"}
	if o.LogLevel != "" {
		common = append(common, "-log-level", o.LogLevel)
	}
	logs := filepath.Join(o.Dir, "logs")
	// Binaries that serve Unix sockets by default refuse plain TCP
	// without -insecure-tcp, and their gateway never calls the signer.
	n.insecureTCP = hasBoolFlag(o.Bin, "signer", "-insecure-tcp")
	signerArgs := append(slices.Clone(common), "-listen", n.SignerAddr, "-key-files", n.SecretKey)
	if n.insecureTCP {
		signerArgs = append(signerArgs, "-insecure-tcp")
	}
	if signerArgs, err = withMetrics(o.Bin, "signer", signerArgs); err != nil {
		return nil, err
	}
	n.Signer, err = proc.Start(o.Name+"/signer", "signer", logs, nil, filepath.Join(o.Bin, "nixcache-signer"), signerArgs...)
	if err == nil {
		_, err = n.Signer.WaitReady(ctx, readyTimeout, grpcServing(n.SignerAddr))
	}
	if err == nil {
		err = n.StartIndex(ctx)
	}
	gatewayArgs := func(addr string) []string {
		args := append(slices.Clone(common), "-listen", addr, "-index-addr", n.IndexAddr, "-auth-file", filepath.Join(o.Dir, "auth"))
		if !n.insecureTCP {
			args = append(args, "-signer-addr", n.SignerAddr)
		}
		return args
	}
	if err == nil {
		args := gatewayArgs(n.HTTPAddr)
		if o.CoLocated && hasFlag(o.Bin, "gateway", "-nar-dir") {
			n.CoLocated = true
			args = append(args, "-nar-dir", filepath.Join(o.Dir, "index", "nars"))
		}
		if n.spool != "" {
			args = append(args, "-upload-spool", "unix:"+n.spool)
		}
		if o.LocalStoreDir != "" && hasFlag(o.Bin, "gateway", "-local-store-dir") {
			args = append(args, "-local-store-dir", o.LocalStoreDir)
		}
		if args, err = withMetrics(o.Bin, "gateway", args); err == nil {
			n.Gateway, err = proc.Start(o.Name+"/gateway", "gateway", logs, nil, filepath.Join(o.Bin, "nixcache-gateway"), args...)
		}
	}
	if err == nil {
		_, err = n.Gateway.WaitReady(ctx, readyTimeout, httpOK(n.URL+"/nix-cache-info"))
	}
	if err == nil && o.StreamGateway {
		var addr string
		if addr, err = FreeAddr(); err == nil {
			n.StreamURL = "http://" + addr
			args := gatewayArgs(addr)
			if args, err = withMetrics(o.Bin, "gateway", args); err == nil {
				n.StreamGateway, err = proc.Start(o.Name+"/gateway-stream", "gateway-stream", logs, nil, filepath.Join(o.Bin, "nixcache-gateway"), args...)
			}
		}
		if err == nil {
			_, err = n.StreamGateway.WaitReady(ctx, readyTimeout, httpOK(n.StreamURL+"/nix-cache-info"))
		}
	}
	if err != nil {
		n.Stop()
		return nil, err
	}
	return n, nil
}

// StartIndex starts the index (again, after StopIndex) and records how
// long it took to serve.
func (n *Nixcache) StartIndex(ctx context.Context) error {
	args := []string{"-log-format", "json", "-listen", n.IndexAddr,
		"-data-dir", filepath.Join(n.Dir, "index"), "-signer-addr", n.SignerAddr}
	if n.insecureTCP {
		// The index checks the push token itself too.
		args = append(args, "-insecure-tcp", "-auth-file", filepath.Join(n.Dir, "auth"))
	}
	if n.spool != "" {
		args = append(args, "-upload-spool", "unix:"+n.spool)
	}
	args = append(args, n.indexArgs...)
	args, err := withMetrics(n.bin, "index", args)
	if err != nil {
		return err
	}
	p, err := proc.Start(n.Name+"/index", "index", filepath.Join(n.Dir, "logs"), nil, filepath.Join(n.bin, "nixcache-index"), args...)
	if err != nil {
		return err
	}
	n.Index = p
	timeout := readyTimeout
	if n.IndexReadyTimeout > 0 {
		timeout = n.IndexReadyTimeout
	}
	n.IndexStartup, err = p.WaitReady(ctx, timeout, grpcServing(n.IndexAddr))
	return err
}

// hasFlag reports whether nixcache-<service> -h lists flag.
func hasFlag(bin, service, flag string) bool {
	help, _ := exec.Command(filepath.Join(bin, "nixcache-"+service), "-h").CombinedOutput()
	return strings.Contains(string(help), flag+" ")
}

// hasBoolFlag reports whether a service's binary has the boolean flag
// (printed alone on its help line).
func hasBoolFlag(bin, service, flag string) bool {
	help, _ := exec.Command(filepath.Join(bin, "nixcache-"+service), "-h").CombinedOutput()
	return strings.Contains(string(help), "  "+flag+"\n")
}

// withMetrics gives a service that serves metrics on a fixed default port
// (-metrics-listen) a free port of its own, so that deployments side by
// side do not collide; metrics stay on, as deployed.
func withMetrics(bin, service string, args []string) ([]string, error) {
	if !hasFlag(bin, service, "-metrics-listen") {
		return args, nil
	}
	addr, err := FreeAddr()
	if err != nil {
		return nil, err
	}
	return append(args, "-metrics-listen", addr), nil
}

// StopIndex stops the index alone.
func (n *Nixcache) StopIndex() {
	n.Index.Stop()
}

// Procs are the running services.
func (n *Nixcache) Procs() []*proc.Proc {
	var ps []*proc.Proc
	for _, p := range []*proc.Proc{n.Signer, n.Index, n.Gateway, n.StreamGateway} {
		if p != nil {
			ps = append(ps, p)
		}
	}
	return ps
}

// Stop stops the services, gateways first.
func (n *Nixcache) Stop() {
	for _, p := range []*proc.Proc{n.StreamGateway, n.Gateway, n.Index, n.Signer} {
		if p != nil {
			p.Stop()
		}
	}
}

// Netrc writes a netrc file with the push token and returns its path.
func (n *Nixcache) Netrc() (string, error) {
	host, _, _ := net.SplitHostPort(n.HTTPAddr)
	path := filepath.Join(n.Dir, "netrc")
	content := fmt.Sprintf("machine %s login nixcache password %s\n", host, n.PushToken)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		return "", fmt.Errorf("write netrc: %w", err)
	}
	return path, nil
}

// grpcServing is a readiness check: grpc.health.v1 says SERVING.
func grpcServing(addr string) func(context.Context) bool {
	return func(ctx context.Context) bool {
		cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return false
		}
		defer cc.Close()
		ctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		resp, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
		return err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING
	}
}

// httpOK is a readiness check: GET url answers 200.
func httpOK(url string) func(context.Context) bool {
	return func(ctx context.Context) bool {
		ctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return false
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}
}

// Nginx is one nginx master (with its workers) serving static binary
// caches, one port per cache directory.
type Nginx struct {
	URLs   map[string]string // cache name -> http://127.0.0.1:PORT
	Master *proc.Proc
}

// StartNginx serves each directory of roots (cache name -> directory) on
// a port of its own, with a configuration tuned the way a static binary
// cache is served: sendfile, keep-alive, one worker per core.
func StartNginx(ctx context.Context, dir string, roots map[string]string) (*Nginx, error) {
	bin, err := exec.LookPath("nginx")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/nginx"); serr != nil {
			return nil, fmt.Errorf("nginx is not installed (scripts/tools.sh installs Debian's): %w", err)
		}
		bin = "/usr/sbin/nginx"
	}
	if err := os.MkdirAll(filepath.Join(dir, "logs"), 0o755); err != nil {
		return nil, fmt.Errorf("nginx: %w", err)
	}
	ng := &Nginx{URLs: map[string]string{}}
	var servers strings.Builder
	for name, root := range roots {
		addr, err := FreeAddr()
		if err != nil {
			return nil, err
		}
		ng.URLs[name] = "http://" + addr
		fmt.Fprintf(&servers, `
  server {
    listen %s;
    root %s;
    access_log %s;
    location / { }
  }
`, addr, root, filepath.Join(dir, "logs", name+".access.log"))
	}
	conf := fmt.Sprintf(`# written by nixcache's benchmark
worker_processes auto;
pid %[1]s/nginx.pid;
error_log %[1]s/logs/error.log warn;
daemon off;
events { worker_connections 1024; }
http {
  types { text/x-nix-narinfo narinfo; application/x-nix-nar nar; }
  default_type application/octet-stream;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_timeout 120s;
  keepalive_requests 1000000;
  client_body_temp_path %[1]s/tmp;
  proxy_temp_path %[1]s/tmp;
  fastcgi_temp_path %[1]s/tmp;
  uwsgi_temp_path %[1]s/tmp;
  scgi_temp_path %[1]s/tmp;
%[2]s}
`, dir, servers.String())
	confPath := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		return nil, fmt.Errorf("nginx: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "tmp"), 0o755); err != nil {
		return nil, fmt.Errorf("nginx: %w", err)
	}
	ng.Master, err = proc.Start("nginx", "nginx", filepath.Join(dir, "logs"), nil, bin, "-p", dir, "-c", confPath)
	if err != nil {
		return nil, err
	}
	for _, u := range ng.URLs {
		if _, err := ng.Master.WaitReady(ctx, readyTimeout, httpOK(u+"/nix-cache-info")); err != nil {
			ng.Master.Stop()
			return nil, err
		}
	}
	return ng, nil
}

// Workers are the pids of nginx's worker processes.
func (ng *Nginx) Workers() []int { return proc.Children(ng.Master.Pid()) }

// Stop stops nginx (SIGTERM: fast shutdown).
func (ng *Nginx) Stop() { ng.Master.Stop() }

// NixDaemon is a nix-daemon serving the host store on a private socket.
type NixDaemon struct {
	Socket string
	Proc   *proc.Proc
}

// StartNixDaemon starts nix-daemon listening on dir/daemon.sock.
func StartNixDaemon(ctx context.Context, dir string, env []string) (*NixDaemon, error) {
	bin, err := exec.LookPath("nix-daemon")
	if err != nil {
		return nil, fmt.Errorf("nix-daemon: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("nix-daemon: %w", err)
	}
	sock := filepath.Join(dir, "daemon.sock")
	_ = os.Remove(sock)
	p, err := proc.Start("nix-daemon", "nix-daemon", dir, append(env, "NIX_DAEMON_SOCKET_PATH="+sock), bin)
	if err != nil {
		return nil, err
	}
	_, err = p.WaitReady(ctx, readyTimeout, func(context.Context) bool {
		c, err := net.Dial("unix", sock)
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
	if err != nil {
		p.Stop()
		return nil, err
	}
	return &NixDaemon{Socket: sock, Proc: p}, nil
}

// Stop stops the daemon.
func (d *NixDaemon) Stop() { d.Proc.Stop() }
