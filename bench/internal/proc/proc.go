// Package proc starts the processes the benchmark measures (nixcache's
// services, nginx, nix-daemon), waits for them to be ready, stops them, and
// reads their memory and CPU use from /proc.
package proc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Proc is one running process the benchmark started.
type Proc struct {
	Name string // e.g. "nixcache-none/index"
	Role string // e.g. "index"
	Log  string // file holding its stdout and stderr

	cmd     *exec.Cmd
	done    chan struct{}
	started time.Time
}

// Start runs bin with args, its output appended to logDir/<file name>.log.
func Start(name, role, logDir string, env []string, bin string, args ...string) (*Proc, error) {
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	logPath := filepath.Join(logDir, strings.NewReplacer("/", "-").Replace(name)+".log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), env...)
	// Its own process group: a Ctrl-C of the benchmark reaches it only
	// through Stop, after the benchmark has written what it measured.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p := &Proc{Name: name, Role: role, Log: logPath, cmd: cmd, done: make(chan struct{})}
	p.started = time.Now()
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	return p, nil
}

// Pid is the process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Started is when the process was started.
func (p *Proc) Started() time.Time { return p.started }

// Exited reports whether the process has ended.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// WaitReady polls ready every 10 ms until it returns true, the process
// exits, or timeout passes; it returns how long after the start the
// process became ready.
func (p *Proc) WaitReady(ctx context.Context, timeout time.Duration, ready func(context.Context) bool) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if ready(ctx) {
			return time.Since(p.started), nil
		}
		select {
		case <-p.done:
			return 0, fmt.Errorf("%s exited before it was ready; its log: %s\n%s", p.Name, p.Log, tail(p.Log))
		case <-ctx.Done():
			return 0, fmt.Errorf("%s not ready after %s; its log: %s\n%s", p.Name, timeout, p.Log, tail(p.Log))
		case <-tick.C:
		}
	}
}

// Stop sends SIGTERM, and SIGKILL after 20 s, and waits for the exit.
func (p *Proc) Stop() {
	if p == nil || p.Exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// tail is the end of a log file, for error messages.
func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// Mem is a process's memory use from /proc/<pid>/status, in bytes.
type Mem struct {
	RSS     uint64 // VmRSS
	HWM     uint64 // VmHWM: the peak of VmRSS since start
	RssAnon uint64 // RssAnon: heap, stacks
	RssFile uint64 // RssFile: mapped files (bbolt's mmap, the binary)
}

// ReadMem reads /proc/<pid>/status.
func ReadMem(pid int) (Mem, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return Mem{}, err
	}
	var m Mem
	for _, line := range strings.Split(string(b), "\n") {
		key, val, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		var dst *uint64
		switch key {
		case "VmRSS":
			dst = &m.RSS
		case "VmHWM":
			dst = &m.HWM
		case "RssAnon":
			dst = &m.RssAnon
		case "RssFile":
			dst = &m.RssFile
		default:
			continue
		}
		f := strings.Fields(val) // "1234 kB"
		if len(f) == 2 && f[1] == "kB" {
			n, err := strconv.ParseUint(f[0], 10, 64)
			if err == nil {
				*dst = n << 10
			}
		}
	}
	return m, nil
}

// CPUTime is the user plus system CPU time a process has used, from
// /proc/<pid>/stat.
func CPUTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name may hold spaces: fields start after the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, errors.New("bad /proc stat")
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, errors.New("short /proc stat")
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, errors.New("bad /proc stat times")
	}
	const ticks = 100 // USER_HZ on Linux
	return time.Duration(ut+st) * time.Second / ticks, nil
}

// Children lists the pids of a process's children (nginx's workers).
func Children(pid int) []int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		if n, err := strconv.Atoi(f); err == nil {
			pids = append(pids, n)
		}
	}
	return pids
}

// Sample is one reading of a process's memory.
type Sample struct {
	At  time.Duration // since the sampler started
	Mem Mem
}

// Sampler reads the memory of a set of processes at a fixed interval and
// keeps the peak of each, and, while recording, every sample.
type Sampler struct {
	interval time.Duration
	start    time.Time

	mu        sync.Mutex
	procs     map[string]int // name -> pid
	peak      map[string]Mem
	recording map[string][]Sample // nil unless Record is on
	stop      chan struct{}
	stopped   chan struct{}
}

// NewSampler starts sampling every interval.
func NewSampler(interval time.Duration) *Sampler {
	s := &Sampler{
		interval: interval,
		start:    time.Now(),
		procs:    map[string]int{},
		peak:     map[string]Mem{},
		stop:     make(chan struct{}),
		stopped:  make(chan struct{}),
	}
	go s.loop()
	return s
}

// Watch adds a process under name.
func (s *Sampler) Watch(name string, pid int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.procs[name] = pid
}

// Forget stops sampling name, after a last reading (its VmHWM covers the
// moments between samples).
func (s *Sampler) Forget(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if pid, ok := s.procs[name]; ok {
		s.sampleLocked(name, pid)
		delete(s.procs, name)
	}
}

// Record starts keeping every sample of the named processes, dropping
// what was kept before.
func (s *Sampler) Record(names ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.recording = map[string][]Sample{}
	for _, n := range names {
		s.recording[n] = []Sample{}
	}
}

// Recorded stops recording and returns what was kept.
func (s *Sampler) Recorded() map[string][]Sample {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.recording
	s.recording = nil
	return r
}

// Peaks returns the peak memory seen of every process ever watched.
func (s *Sampler) Peaks() map[string]Mem {
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, pid := range s.procs {
		s.sampleLocked(name, pid)
	}
	out := make(map[string]Mem, len(s.peak))
	for k, v := range s.peak {
		out[k] = v
	}
	return out
}

// Close stops sampling.
func (s *Sampler) Close() {
	close(s.stop)
	<-s.stopped
}

func (s *Sampler) loop() {
	defer close(s.stopped)
	t := time.NewTicker(s.interval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		s.mu.Lock()
		for name, pid := range s.procs {
			s.sampleLocked(name, pid)
		}
		s.mu.Unlock()
	}
}

func (s *Sampler) sampleLocked(name string, pid int) {
	m, err := ReadMem(pid)
	if err != nil || m.RSS == 0 {
		return // exited
	}
	p := s.peak[name]
	p.RSS = max(p.RSS, m.RSS)
	p.HWM = max(p.HWM, m.HWM)
	p.RssAnon = max(p.RssAnon, m.RssAnon)
	p.RssFile = max(p.RssFile, m.RssFile)
	s.peak[name] = p
	if rec, ok := s.recording[name]; ok {
		s.recording[name] = append(rec, Sample{At: time.Since(s.start), Mem: m})
	}
}
