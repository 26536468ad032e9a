package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The tests in this file drive the push client, bin/nixcache, against the
// real binaries, with path infos from a real nix-daemon of the host's
// store and substitution by the real Nix client.

// nixcacheCmd returns the push client's command with args, its
// environment cleared of NIXCACHE_ variables the test did not set.
func nixcacheCmd(args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(binDir, "nixcache"), args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "NIXCACHE_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	return cmd
}

// runNixcache runs the push client to its end and returns its output.
func runNixcache(t *testing.T, env []string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	cmd := nixcacheCmd(args...)
	cmd.Env = append(cmd.Env, env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	return out.String(), errb.String(), err
}

func mustNixcache(t *testing.T, env []string, args ...string) (stdout, stderr string) {
	t.Helper()
	out, errOut, err := runNixcache(t, env, args...)
	if err != nil {
		t.Fatalf("nixcache %s: %v\n%s", strings.Join(args, " "), err, errOut)
	}
	return out, errOut
}

// pushArgs are the flags of a push of c through the daemon on socket.
func pushArgs(c *cluster, socket string, extra ...string) []string {
	return append([]string{"-cache", c.URL, "-daemon-socket", socket, "-token", c.pushToken}, extra...)
}

// TestClientPush pushes closures with each compression through the
// client, substitutes them into a fresh store, and pushes them again.
func TestClientPush(t *testing.T) {
	c := newCluster(t)
	socket := startNixDaemon(t)
	for _, compression := range []string{"zstd", "none", "xz"} {
		t.Run(compression, func(t *testing.T) {
			top, closure := buildClosure(t)
			local := pathInfos(t, nixConfig(), "--recursive", top)
			// Several jobs: the cache refuses a narinfo whose references it
			// lacks, so any reordering fails the push.
			_, errOut := mustNixcache(t, nil, append([]string{"push"}, pushArgs(c, socket, "-compression", compression, "-jobs", "8", top)...)...)
			if !strings.Contains(errOut, "uploaded=3") {
				t.Errorf("push log does not say 3 paths were uploaded:\n%s", errOut)
			}
			remote := pathInfos(t, nixConfig(), "--store", c.URL, "--recursive", top)
			for _, p := range closure {
				if r, ok := remote[p]; !ok || r.NarHash != local[p].NarHash || !hasSigBy(r.Signatures, "e2e-cache-1") {
					t.Errorf("%s in the cache: %+v (host: %s)", p, r, local[p].NarHash)
				}
			}
			substituteAndCheck(t, c, top, closure, local)

			// Again: one query finds everything present.
			_, errOut = mustNixcache(t, nil, append([]string{"push"}, pushArgs(c, socket, "-compression", compression, top)...)...)
			if !strings.Contains(errOut, "present=3") || !strings.Contains(errOut, "uploaded=0") {
				t.Errorf("second push uploaded again:\n%s", errOut)
			}
		})
	}
}

// narinfoPuts counts the successful narinfo uploads of each hash part in
// a gateway's log.
func narinfoPuts(t *testing.T, logPath string) map[string]int {
	t.Helper()
	puts := map[string]int{}
	for _, line := range strings.Split(readFile(t, logPath), "\n") {
		if !strings.Contains(line, `"method":"PUT"`) || !strings.Contains(line, `"status":204`) {
			continue
		}
		i := strings.Index(line, `"path":"/`)
		if i < 0 {
			continue
		}
		rest := line[i+len(`"path":"/`):]
		if j := strings.Index(rest, `.narinfo"`); j == 32 {
			puts[rest[:32]]++
		}
	}
	return puts
}
