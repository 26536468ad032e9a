// Package cli is the nixcache command: its subcommands, their flags (each
// with an environment twin) and their wiring.
package cli

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"golang.org/x/term"

	"github.com/nixcache/nixcache/cmd/nixcache/internal/cacheclient"
	"github.com/nixcache/nixcache/cmd/nixcache/internal/drain"
	"github.com/nixcache/nixcache/cmd/nixcache/internal/drv"
	"github.com/nixcache/nixcache/cmd/nixcache/internal/netrc"
	"github.com/nixcache/nixcache/cmd/nixcache/internal/push"
	"github.com/nixcache/nixcache/cmd/nixcache/internal/setup"
	"github.com/nixcache/nixcache/cmd/nixcache/internal/spool"
	"github.com/nixcache/nixcache/cmd/nixcache/internal/storewatch"
	"github.com/nixcache/nixcache/nix/daemon"
	"github.com/nixcache/nixcache/nix/storepath"
	"github.com/nixcache/nixcache/platform/envflag"
	"github.com/nixcache/nixcache/platform/logging"
)

// IO is the command's standard streams.
type IO struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
}

// DefaultSpool is the spool file of the hook and the daemon.
const DefaultSpool = "/var/lib/nixcache/spool.db"

const usage = `nixcache pushes store paths to a nixcache.

  nixcache push [flags] PATH...    push the closures of PATHs (-stdin: read paths from stdin)
  nixcache hook [flags]            post-build-hook: queue $OUT_PATHS in the spool, return at once
  nixcache daemon [flags]          push what the hook queued; keeps failing paths queued
  nixcache status [flags]          what is queued, and the last error
  nixcache watch-store [flags]     push every path that becomes valid in the store
  nixcache use [flags] URL         print (-write: add) the nix.conf lines and netrc entry for a cache

"nixcache COMMAND -h" lists a command's flags; each has an environment twin
(-cache is $NIXCACHE_CACHE). The token is -token ($NIXCACHE_TOKEN), else the
password of the cache host's entry in the netrc file.
`

// Run runs the command args names.
func Run(ctx context.Context, args []string, std IO) error {
	if len(args) == 0 {
		fmt.Fprint(std.Stderr, usage)
		return errors.New("no command given")
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "push":
		return runPush(ctx, rest, std)
	case "hook":
		return runHook(rest, std)
	case "daemon":
		return runDaemon(ctx, rest, std)
	case "status":
		return runStatus(rest, std)
	case "watch-store":
		return runWatchStore(ctx, rest, std)
	case "use":
		return runUse(ctx, rest, std)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(std.Stdout, usage)
		return nil
	}
	fmt.Fprint(std.Stderr, usage)
	return fmt.Errorf("unknown command %q", cmd)
}

// common are the flags of every command that talks to the cache.
type common struct {
	cache, token, netrcFile string
	retries                 int
	logFormat, logLevel     string
}

func (c *common) register(fs *flag.FlagSet) {
	fs.StringVar(&c.cache, "cache", "", "URL of the cache, e.g. https://cache.example.org")
	fs.StringVar(&c.token, "token", "", "token with the push scope (and read, when reads are private); empty: the netrc entry of the cache's host")
	fs.StringVar(&c.netrcFile, "netrc-file", "", "netrc file with the token as the password of the cache's host (what Nix's netrc-file setting names); empty: ~/.netrc, then /etc/nix/netrc")
	fs.IntVar(&c.retries, "retries", 6, "how many times a request the cache answers 429, 502, 503 or 504, or whose connection fails, is retried, with exponential backoff")
	fs.StringVar(&c.logFormat, "log-format", "text", "log format: json or text")
	fs.StringVar(&c.logLevel, "log-level", "info", "log level: debug, info, warn or error")
}

func (c *common) logger(w io.Writer) (*slog.Logger, error) {
	return logging.New(w, c.logFormat, c.logLevel)
}

// client returns the cache's client, with the token found.
func (c *common) client(log *slog.Logger) (*cacheclient.Client, error) {
	if c.cache == "" {
		return nil, errors.New("no cache given: -cache URL (or $NIXCACHE_CACHE)")
	}
	probe, err := cacheclient.New(cacheclient.Config{URL: c.cache, Log: log})
	if err != nil {
		return nil, err
	}
	token := c.token
	if token == "" {
		if token, err = c.netrcToken(probe.Host()); err != nil {
			return nil, err
		}
	}
	return cacheclient.New(cacheclient.Config{URL: c.cache, Token: token, Retries: c.retries, Log: log})
}

// netrcToken is the password of host in the netrc file.
func (c *common) netrcToken(host string) (string, error) {
	files := []string{c.netrcFile}
	if c.netrcFile == "" {
		files = nil
		if home, err := os.UserHomeDir(); err == nil {
			files = append(files, filepath.Join(home, ".netrc"))
		}
		files = append(files, "/etc/nix/netrc")
	}
	for _, f := range files {
		p, found, err := netrc.Password(f, host)
		if err != nil {
			return "", err
		}
		if found {
			return p, nil
		}
	}
	return "", nil
}

// pushFlags are the flags of the commands that push.
type pushFlags struct {
	common
	storeDir, socket, compression, tempDir string
	zstdLevel, zstdThreads, jobs           int
	skipSignedBy                           envflag.List
}

func (p *pushFlags) register(fs *flag.FlagSet) {
	p.common.register(fs)
	fs.StringVar(&p.storeDir, "store-dir", storepath.DefaultStoreDir, "the local Nix store, read directly to dump NARs")
	fs.StringVar(&p.socket, "daemon-socket", daemon.DefaultSocket, "the nix-daemon's socket, asked for path infos")
	fs.StringVar(&p.compression, "compression", "zstd", "compression of the uploaded NARs: zstd, none or xz")
	fs.IntVar(&p.zstdLevel, "zstd-level", 3, "zstd level, 1 (fastest) to 22 (smallest)")
	fs.IntVar(&p.zstdThreads, "zstd-threads", 0, "zstd threads per NAR; 0: one per CPU")
	fs.IntVar(&p.jobs, "jobs", max(4, runtime.GOMAXPROCS(0)), "paths dumped, compressed and uploaded at once")
	fs.StringVar(&p.tempDir, "temp-dir", "", "directory of compressed NARs too large for memory (unlinked at once); empty: the system's")
	fs.Var(&p.skipSignedBy, "skip-signed-by", "do not push paths signed by these keys: key names (cache.nixos.org-1) or public keys (name:base64, the signature is then verified); the cache must get them elsewhere (an upstream)")
}

// pusher returns the pusher the flags describe, and what to close.
func (p *pushFlags) pusher(log *slog.Logger, progress func(push.Progress)) (*push.Pusher, func(), error) {
	client, err := p.client(log)
	if err != nil {
		return nil, nil, err
	}
	pool, err := daemon.NewPool(p.socket, max(p.jobs, 2), daemon.WithStoreDir(p.storeDir))
	if err != nil {
		return nil, nil, err
	}
	pusher, err := push.New(push.Options{Cache: client, Daemon: pool, StoreDir: p.storeDir,
		Compression: p.compression, ZstdLevel: p.zstdLevel, ZstdThreads: p.zstdThreads, Jobs: p.jobs,
		SkipSignedBy: p.skipSignedBy.Values, TempDir: p.tempDir, Progress: progress, Log: log})
	if err != nil {
		pool.Close()
		return nil, nil, err
	}
	return pusher, func() { pool.Close() }, nil
}

func newFlagSet(name string, std IO) *flag.FlagSet {
	fs := flag.NewFlagSet("nixcache "+name, flag.ContinueOnError)
	fs.SetOutput(std.Stderr)
	return fs
}

func runPush(ctx context.Context, args []string, std IO) error {
	fs := newFlagSet("push", std)
	var f pushFlags
	f.register(fs)
	stdin := fs.Bool("stdin", false, "read the paths to push from stdin, one a line (or separated by spaces)")
	quiet := fs.Bool("quiet", false, "no progress line, even on a terminal")
	if err := envflag.Parse(fs, args); err != nil {
		return err
	}
	log, err := f.logger(std.Stderr)
	if err != nil {
		return err
	}
	roots := fs.Args()
	if *stdin {
		sc := bufio.NewScanner(std.Stdin)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			roots = append(roots, strings.Fields(sc.Text())...)
		}
		if err := sc.Err(); err != nil {
			return fmt.Errorf("read paths from stdin: %w", err)
		}
	}
	if roots, err = storePaths(f.storeDir, roots); err != nil {
		return err
	}
	if len(roots) == 0 {
		return errors.New("no paths to push (give them as arguments, or -stdin)")
	}
	var progress func(push.Progress)
	tty := false
	if file, ok := std.Stderr.(*os.File); ok && !*quiet && term.IsTerminal(int(file.Fd())) {
		progress, tty = push.Printer(std.Stderr), true
	}
	pusher, closeFn, err := f.pusher(log, progress)
	if err != nil {
		return err
	}
	defer closeFn()
	res, err := pusher.Push(ctx, roots)
	if tty {
		fmt.Fprintln(std.Stderr)
	}
	if err != nil {
		return err
	}
	log.Info("pushed", "closure", res.Closure, "present", res.Present, "skipped", res.Skipped, "uploaded", res.Uploaded,
		"nar_bytes", res.NarBytes, "file_bytes", res.FileBytes, "duration", res.Duration.Round(time.Millisecond))
	return nil
}

// storePaths resolves paths given by the user (a result symlink, a path
// inside a store path) to store paths.
func storePaths(storeDir string, args []string) ([]string, error) {
	var out []string
	for _, a := range args {
		p := a
		if !strings.HasPrefix(p, storeDir+"/") {
			resolved, err := filepath.EvalSymlinks(a)
			if err != nil {
				return nil, fmt.Errorf("%s: not a store path: %w", a, err)
			}
			p = resolved
		}
		rest, ok := strings.CutPrefix(p, storeDir+"/")
		if !ok {
			return nil, fmt.Errorf("%s: not in the store %s", a, storeDir)
		}
		base, _, _ := strings.Cut(rest, "/")
		sp, err := storepath.ParseBase(base)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", a, err)
		}
		out = append(out, sp.Absolute(storeDir))
	}
	return out, nil
}

func spoolFlag(fs *flag.FlagSet) *string {
	return fs.String("spool", DefaultSpool, "the spool file (bbolt) the hook queues paths in and the daemon drains")
}

func runHook(args []string, std IO) error {
	fs := newFlagSet("hook", std)
	path := spoolFlag(fs)
	storeDir := fs.String("store-dir", storepath.DefaultStoreDir, "the local Nix store")
	if err := envflag.Parse(fs, args); err != nil {
		return err
	}
	// Nix runs the hook with the outputs in $OUT_PATHS, space-separated;
	// Nix 2.8 leaves it empty, and they are read from $DRV_PATH then.
	outs := strings.Fields(os.Getenv("OUT_PATHS"))
	if drvPath := os.Getenv("DRV_PATH"); len(outs) == 0 && drvPath != "" {
		var err error
		if outs, err = drv.Outputs(drvPath); err != nil {
			return fmt.Errorf("hook: $OUT_PATHS is empty: %w", err)
		}
	}
	outs = append(outs, fs.Args()...)
	paths, err := storePaths(*storeDir, outs)
	if err != nil {
		return fmt.Errorf("hook: %w", err)
	}
	s, err := spool.New(*path)
	if err != nil {
		return err
	}
	if err := s.Enqueue(paths); err != nil {
		return fmt.Errorf("hook: %w", err)
	}
	return nil
}

func runDaemon(ctx context.Context, args []string, std IO) error {
	fs := newFlagSet("daemon", std)
	var f pushFlags
	f.register(fs)
	path := spoolFlag(fs)
	poll := fs.Duration("poll-interval", 250*time.Millisecond, "how often the spool is looked at while idle")
	batch := fs.Int("batch", 1000, "most queued paths pushed at once")
	maxBackoff := fs.Duration("max-backoff", time.Minute, "longest wait before pushing again after a failure")
	if err := envflag.Parse(fs, args); err != nil {
		return err
	}
	log, err := f.logger(std.Stderr)
	if err != nil {
		return err
	}
	s, err := spool.New(*path)
	if err != nil {
		return err
	}
	pusher, closeFn, err := f.pusher(log, nil)
	if err != nil {
		return err
	}
	defer closeFn()
	log.Info("draining the spool", "spool", *path, "cache", f.cache)
	return drain.Run(ctx, drain.Config{Spool: s, Pusher: pusher, PollInterval: *poll, Batch: *batch,
		MinBackoff: time.Second, MaxBackoff: *maxBackoff, Log: log})
}

func runStatus(args []string, std IO) error {
	fs := newFlagSet("status", std)
	path := spoolFlag(fs)
	if err := envflag.Parse(fs, args); err != nil {
		return err
	}
	s, err := spool.New(*path)
	if err != nil {
		return err
	}
	st, err := s.Status()
	if err != nil {
		return err
	}
	w := std.Stdout
	fmt.Fprintf(w, "queued: %d\n", st.Queued)
	for _, p := range st.Oldest {
		fmt.Fprintf(w, "  %s\n", p)
	}
	fmt.Fprintf(w, "pushed: %d\n", st.Pushed)
	if !st.LastPush.IsZero() {
		fmt.Fprintf(w, "last push: %s\n", st.LastPush.Format(time.RFC3339))
	}
	if st.LastError != "" {
		fmt.Fprintf(w, "last error (%s): %s\n", st.LastErrorTime.Format(time.RFC3339), st.LastError)
	}
	return nil
}

func runWatchStore(ctx context.Context, args []string, std IO) error {
	fs := newFlagSet("watch-store", std)
	var f pushFlags
	f.register(fs)
	nixDB := fs.String("nix-db", "/nix/var/nix/db/db.sqlite", "Nix's database, stat'ed to notice new paths")
	poll := fs.Duration("poll-interval", time.Second, "how often the database is stat'ed")
	maxBackoff := fs.Duration("max-backoff", time.Minute, "longest wait before pushing again after a failure")
	if err := envflag.Parse(fs, args); err != nil {
		return err
	}
	log, err := f.logger(std.Stderr)
	if err != nil {
		return err
	}
	pusher, closeFn, err := f.pusher(log, nil)
	if err != nil {
		return err
	}
	defer closeFn()
	return storewatch.Run(ctx, storewatch.Config{Pusher: pusher, NixDB: *nixDB, PollInterval: *poll,
		MinBackoff: time.Second, MaxBackoff: *maxBackoff, Log: log})
}

func runUse(ctx context.Context, args []string, std IO) error {
	fs := newFlagSet("use", std)
	var c common
	c.register(fs)
	storeDir := fs.String("store-dir", storepath.DefaultStoreDir, "the local Nix store, which the cache must serve")
	write := fs.Bool("write", false, "add the lines to -nix-conf and the netrc entry to -netrc-file instead of printing them")
	nixConf := fs.String("nix-conf", "/etc/nix/nix.conf", "nix.conf that -write adds to")
	if err := envflag.Parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() == 1 {
		c.cache = fs.Arg(0)
	} else if fs.NArg() > 1 {
		return fmt.Errorf("use takes one URL, got %q", fs.Args())
	}
	log, err := c.logger(std.Stderr)
	if err != nil {
		return err
	}
	client, err := c.client(log)
	if err != nil {
		return err
	}
	token := c.token
	if token == "" {
		if token, err = c.netrcToken(client.Host()); err != nil {
			return err
		}
	}
	netrcFile := c.netrcFile
	if netrcFile == "" {
		netrcFile = "/etc/nix/netrc"
	}
	cfg, err := setup.Fetch(ctx, client, *storeDir, token, netrcFile)
	if err != nil {
		return err
	}
	if *write {
		if err := cfg.Write(*nixConf); err != nil {
			return err
		}
		fmt.Fprintf(std.Stderr, "added %s to %s", cfg.URL, *nixConf)
		if cfg.NetrcFile != "" {
			fmt.Fprintf(std.Stderr, " and its token to %s", cfg.NetrcFile)
		}
		fmt.Fprintln(std.Stderr, "; restart nix-daemon to use it")
		return nil
	}
	fmt.Fprintf(std.Stdout, "# %s\n", *nixConf)
	for _, l := range cfg.NixConf() {
		fmt.Fprintln(std.Stdout, l)
	}
	if l := cfg.NetrcLine(); l != "" {
		fmt.Fprintf(std.Stdout, "# %s (mode 0600)\n%s\n", cfg.NetrcFile, l)
	}
	return nil
}
