// Package prof profiles running processes with Linux perf (CPU samples
// with call stacks, kernel included) and sorts where the time went: the
// gRPC hop, copies, system calls, hashing, allocation and GC, logging.
// The services need no profiling endpoint: perf reads the symbols of the
// (unstripped) binaries.
package prof

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Available reports whether perf is installed and may sample.
func Available() error {
	if _, err := exec.LookPath("perf"); err != nil {
		return fmt.Errorf("perf is not installed (Debian: linux-perf)")
	}
	return nil
}

// Recording is a perf record in progress.
type Recording struct {
	file string
	cmd  *exec.Cmd
	errb strings.Builder
}

// Record starts sampling the processes (and their threads) at 999 Hz.
func Record(ctx context.Context, dir, name string, pids []int) (*Recording, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var ps []string
	for _, p := range pids {
		ps = append(ps, strconv.Itoa(p))
	}
	r := &Recording{file: filepath.Join(dir, name+".perf.data")}
	r.cmd = exec.CommandContext(ctx, "perf", "record", "-q", "-e", "cpu-clock", "-F", "999", "-g",
		"-p", strings.Join(ps, ","), "-o", r.file)
	r.cmd.Stderr = &r.errb
	if err := r.cmd.Start(); err != nil {
		return nil, fmt.Errorf("perf record: %w", err)
	}
	// perf needs a moment to attach; samples before that are lost, so
	// wait until it has written its header.
	for range 200 {
		if fi, err := os.Stat(r.file); err == nil && fi.Size() > 0 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	return r, nil
}

// Stop ends the recording and analyses it.
func (r *Recording) Stop() (*Profile, error) {
	_ = r.cmd.Process.Signal(syscall.SIGINT)
	if err := r.cmd.Wait(); err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() > 1 {
			return nil, fmt.Errorf("perf record: %w: %s", err, r.errb.String())
		}
	}
	cmd := exec.Command("perf", "script", "-i", r.file, "-F", "comm,ip,sym,dso")
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	var errb strings.Builder
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("perf script: %w", err)
	}
	p := Parse(out)
	if err := cmd.Wait(); err != nil {
		return nil, fmt.Errorf("perf script: %w: %s", err, errb.String())
	}
	return p, nil
}

// Profile is the analysis of one recording, per command name.
type Profile struct {
	Procs []*ProcProfile `json:"procs"`
}

// ProcProfile is where one program's CPU samples went.
type ProcProfile struct {
	Comm    string  `json:"comm"`
	Samples int     `json:"samples"`
	Top     []Entry `json:"top_self"`  // by leaf symbol
	Buckets []Entry `json:"buckets"`   // exclusive categories, sum = Samples
	Inclus  []Entry `json:"inclusive"` // share of samples with a frame in...
	self    map[string]int
	bucket  map[string]int
	inclus  map[string]int
}

// Entry is a count of samples under a name.
type Entry struct {
	Name    string  `json:"name"`
	Samples int     `json:"samples"`
	Percent float64 `json:"percent"`
}

// Parse reads `perf script -F comm,ip,sym,dso` output. Kernel frames
// get the prefix "[k] ".
func Parse(r io.Reader) *Profile {
	byComm := map[string]*ProcProfile{}
	var comm string
	var stack []string
	flush := func() {
		if comm == "" || len(stack) == 0 {
			comm, stack = "", stack[:0]
			return
		}
		pp := byComm[comm]
		if pp == nil {
			pp = &ProcProfile{Comm: comm, self: map[string]int{}, bucket: map[string]int{}, inclus: map[string]int{}}
			byComm[comm] = pp
		}
		pp.Samples++
		pp.self[stack[0]]++
		pp.bucket[Classify(stack)]++
		for _, c := range inclusive {
			if slices.ContainsFunc(stack, c.match) {
				pp.inclus[c.name]++
			}
		}
		comm, stack = "", stack[:0]
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.TrimSpace(line) == "":
			flush()
		case line[0] != ' ' && line[0] != '\t':
			flush()
			comm = strings.TrimSpace(line)
		default:
			// "\t    ffffffff81000000 symbol+0x12 ([kernel.kallsyms])"
			f := strings.Fields(line)
			sym, dso := "[unknown]", ""
			if len(f) >= 3 {
				sym, dso = strings.Join(f[1:len(f)-1], " "), f[len(f)-1]
			} else if len(f) == 2 {
				sym = f[1]
			}
			if i := strings.LastIndex(sym, "+0x"); i > 0 {
				sym = sym[:i]
			}
			if strings.Contains(dso, "kernel") {
				sym = "[k] " + sym
			}
			stack = append(stack, sym)
		}
	}
	flush()
	p := &Profile{}
	for _, pp := range byComm {
		pp.Top = top(pp.self, pp.Samples, 15)
		pp.Buckets = top(pp.bucket, pp.Samples, 0)
		pp.Inclus = top(pp.inclus, pp.Samples, 0)
		p.Procs = append(p.Procs, pp)
	}
	slices.SortFunc(p.Procs, func(a, b *ProcProfile) int { return b.Samples - a.Samples })
	return p
}

func top(m map[string]int, total, n int) []Entry {
	var es []Entry
	for k, v := range m {
		es = append(es, Entry{Name: k, Samples: v, Percent: 100 * float64(v) / float64(max(total, 1))})
	}
	slices.SortFunc(es, func(a, b Entry) int {
		if a.Samples != b.Samples {
			return b.Samples - a.Samples
		}
		return strings.Compare(a.Name, b.Name)
	})
	if n > 0 && len(es) > n {
		es = es[:n]
	}
	return es
}

type category struct {
	name  string
	match func(sym string) bool
}

func prefix(ps ...string) func(string) bool {
	return func(s string) bool {
		for _, p := range ps {
			if strings.HasPrefix(s, p) {
				return true
			}
		}
		return false
	}
}

func contains(ps ...string) func(string) bool {
	return func(s string) bool {
		for _, p := range ps {
			if strings.Contains(s, p) {
				return true
			}
		}
		return false
	}
}

// inclusive categories: a sample counts for each whose frame is anywhere
// in its stack.
var inclusive = []category{
	{"gRPC (google.golang.org/grpc, x/net/http2)", prefix("google.golang.org/grpc", "golang.org/x/net/http2")},
	{"protobuf", prefix("google.golang.org/protobuf")},
	{"net/http", prefix("net/http.")},
	{"logging (log/slog)", prefix("log/slog")},
	{"syscalls (syscall, internal/poll)", prefix("syscall.", "internal/runtime/syscall", "internal/poll.")},
	{"GC (runtime.gcBgMarkWorker)", prefix("runtime.gcBgMarkWorker", "runtime.gcDrain", "runtime.bgsweep", "runtime.bgscavenge")},
	{"allocation (runtime.mallocgc)", prefix("runtime.mallocgc")},
	{"hashing (crypto/sha256)", prefix("crypto/sha256", "crypto/internal/fips140/sha256")},
	{"bbolt", prefix("go.etcd.io/bbolt")},
	{"nginx sendfile", contains("sendfile")},
}

// kernelCopy are the kernel's user<->kernel and page copies.
var kernelCopy = contains("copy_user", "copy_to_iter", "copy_from_iter", "copy_page", "memcpy", "rep_movs")

// Classify puts a sample (its stack, leaf first) in one exclusive
// category, by what the leaf is doing and, for Go runtime leaves, why.
func Classify(stack []string) string {
	leaf := stack[0]
	in := func(m func(string) bool) bool { return slices.ContainsFunc(stack, m) }
	switch {
	case in(prefix("runtime.gcBgMarkWorker", "runtime.bgsweep", "runtime.bgscavenge")):
		return "GC"
	case isKernel(leaf) && kernelCopy(leaf):
		return "kernel: copying data (user<->kernel, page cache)"
	case isKernel(leaf):
		return "kernel: TCP/loopback, VFS, scheduling"
	case prefix("crypto/sha256", "crypto/internal/fips140/sha256", "sha256block")(leaf):
		return "hashing (sha256)"
	case prefix("runtime.memmove")(leaf):
		return "copies (runtime.memmove)"
	case prefix("runtime.mallocgc", "runtime.memclrNoHeapPointers", "runtime.(*mcache)", "runtime.(*mheap)", "runtime.(*mspan)", "runtime.(*mcentral)", "runtime.nextFreeFast", "runtime.heapSetType")(leaf) || in(prefix("runtime.mallocgc")) && prefix("runtime.")(leaf):
		return "allocation (mallocgc, zeroing)"
	case in(prefix("runtime.gcAssist", "runtime.gcDrain", "runtime.scanobject", "runtime.greyobject", "runtime.markBits")):
		return "GC"
	case prefix("runtime.futex", "runtime.usleep", "runtime.nanotime", "runtime.epoll", "runtime.netpoll", "runtime.findRunnable", "runtime.schedule", "runtime.")(leaf) && !in(prefix("runtime.mallocgc")):
		if in(prefix("syscall.", "internal/runtime/syscall", "internal/poll.")) {
			return "syscall entry (Go side)"
		}
		return "Go scheduler and runtime"
	case prefix("syscall.", "internal/runtime/syscall", "internal/poll.")(leaf):
		return "syscall entry (Go side)"
	case prefix("zstd", "github.com/klauspost/compress")(leaf):
		return "decompression"
	case prefix("google.golang.org/protobuf")(leaf):
		return "protobuf (un)marshal"
	case prefix("google.golang.org/grpc", "golang.org/x/net/http2")(leaf):
		return "gRPC / HTTP2 framing (Go code)"
	case prefix("log/slog", "encoding/json", "strconv.", "time.")(leaf) && in(prefix("log/slog")):
		return "logging"
	case prefix("net/http.", "net/textproto.", "bufio.")(leaf):
		return "net/http (Go code)"
	case prefix("go.etcd.io/bbolt")(leaf):
		return "bbolt"
	}
	return "other user code"
}

func isKernel(sym string) bool { return strings.HasPrefix(sym, "[k] ") }

// Markdown renders the profile's summary for the results file.
func (p *Profile) Markdown(w io.Writer, title string) {
	fmt.Fprintf(w, "#### %s\n\n", title)
	for _, pp := range p.Procs {
		if pp.Samples < 20 {
			continue
		}
		fmt.Fprintf(w, "`%s`, %d samples (%.2f CPU-s):\n\n", pp.Comm, pp.Samples, float64(pp.Samples)/999)
		fmt.Fprintf(w, "| where (exclusive) | share |\n|---|---|\n")
		for _, e := range pp.Buckets {
			fmt.Fprintf(w, "| %s | %.1f%% |\n", e.Name, e.Percent)
		}
		fmt.Fprintf(w, "\n| stack contains (inclusive) | share |\n|---|---|\n")
		for _, e := range pp.Inclus {
			fmt.Fprintf(w, "| %s | %.1f%% |\n", e.Name, e.Percent)
		}
		fmt.Fprintf(w, "\n| top self symbols | share |\n|---|---|\n")
		for _, e := range pp.Top[:min(len(pp.Top), 10)] {
			fmt.Fprintf(w, "| `%s` | %.1f%% |\n", e.Name, e.Percent)
		}
		fmt.Fprintln(w)
	}
}
