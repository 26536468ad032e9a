package shootout

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// nixConfig is a Nix configuration for root on a bench machine: no build
// users, no sandbox, no substituters, no narinfo disk-cache TTLs.
func nixConfig(extra ...string) string {
	return strings.Join(append([]string{
		"experimental-features = nix-command",
		"build-users-group =",
		"sandbox = false",
		"substituters =",
		"narinfo-cache-negative-ttl = 0",
		"narinfo-cache-positive-ttl = 0",
	}, extra...), "\n")
}

// nix runs a Nix command with config and a fresh HOME (so no narinfo disk
// cache carries over) and returns its stdout.
func (b *bench) nix(ctx context.Context, config string, name string, args ...string) (string, error) {
	home, err := os.MkdirTemp(b.o.Work, "home-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(home)
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), "NIX_CONFIG="+config, "HOME="+home, "XDG_CACHE_HOME="+filepath.Join(home, ".cache"))
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		msg := errb.String()
		if len(msg) > 4000 {
			msg = msg[len(msg)-4000:]
		}
		return "", fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, msg)
	}
	return out.String(), nil
}

// pathInfo is what `nix path-info --json` says of one path.
type pathInfo struct {
	Path    string `json:"path"`
	NarSize uint64 `json:"narSize"`
}

// closure lists top's closure with NAR sizes.
func (b *bench) closure(ctx context.Context, top string) ([]pathInfo, error) {
	out, err := b.nix(ctx, nixConfig(), "nix", "path-info", "--json", "-r", top)
	if err != nil {
		return nil, err
	}
	var infos []pathInfo
	if err := json.Unmarshal([]byte(out), &infos); err != nil {
		return nil, fmt.Errorf("nix path-info --json: %w", err)
	}
	return infos, nil
}

// build builds a Nix expression file and returns the output path.
func (b *bench) build(ctx context.Context, file string, args ...string) (string, error) {
	out, err := b.nix(ctx, nixConfig(), "nix-build", append([]string{file, "--no-out-link"}, args...)...)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(out), nil
}

// workload builds the closure of gen-closure.py with the options' size.
func (b *bench) workload(ctx context.Context) (string, error) {
	expr := filepath.Join(b.o.Work, fmt.Sprintf("closure-%d-%d.nix", b.o.Paths, b.o.MiB))
	gen := exec.CommandContext(ctx, "python3", filepath.Join(b.o.Repo, "bench", "workload", "gen-closure.py"),
		expr, fmt.Sprint(b.o.Paths), fmt.Sprint(b.o.MiB))
	if out, err := gen.CombinedOutput(); err != nil {
		return "", fmt.Errorf("gen-closure.py: %w\n%s", err, out)
	} else {
		b.logf("workload: %s", strings.TrimSpace(string(out)))
	}
	return b.build(ctx, expr)
}

// bigNar builds a store path whose NAR is one file of MiB mebibytes of
// random bytes.
func (b *bench) bigNar(ctx context.Context, mib int) (string, error) {
	expr := filepath.Join(b.o.Work, "big.nix")
	src := fmt.Sprintf(`derivation { name = "nixcache-bench-big-%d"; system = "x86_64-linux"; builder = "/bin/sh";
  args = ["-c" "/bin/mkdir $out && /bin/dd if=/dev/urandom of=$out/blob bs=1M count=%d status=none"]; }
`, mib, mib)
	if err := os.WriteFile(expr, []byte(src), 0o644); err != nil {
		return "", err
	}
	return b.build(ctx, expr)
}
