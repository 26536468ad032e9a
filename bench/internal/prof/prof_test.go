package prof

import (
	"strings"
	"testing"
)

// script is `perf script -F comm,ip,sym,dso` output: three samples.
const script = `nixcache-gatewa
	ffffffff81000010 _copy_to_iter+0x10 ([kernel.kallsyms])
	ffffffff81000020 tcp_recvmsg+0x20 ([kernel.kallsyms])
	          4a0010 internal/poll.(*FD).Read+0x50 (/tmp/bin/nixcache-gateway)
	          4a0020 google.golang.org/grpc/internal/transport.(*http2Client).reader+0x10 (/tmp/bin/nixcache-gateway)

nixcache-gatewa
	          4b0010 runtime.memmove+0x1 (/tmp/bin/nixcache-gateway)
	          4b0020 net/http.(*response).Write+0x2 (/tmp/bin/nixcache-gateway)

nixcache-index
	          4c0010 runtime.scanobject+0x3 (/tmp/bin/nixcache-index)
	          4c0020 runtime.gcDrain+0x3 (/tmp/bin/nixcache-index)
	          4c0030 runtime.gcBgMarkWorker+0x3 (/tmp/bin/nixcache-index)
`

func TestParse(t *testing.T) {
	p := Parse(strings.NewReader(script))
	if len(p.Procs) != 2 {
		t.Fatalf("got %d programs, want 2", len(p.Procs))
	}
	gw := p.Procs[0]
	if gw.Comm != "nixcache-gatewa" || gw.Samples != 2 {
		t.Fatalf("first program %s with %d samples, want nixcache-gatewa with 2", gw.Comm, gw.Samples)
	}
	buckets := map[string]int{}
	for _, e := range gw.Buckets {
		buckets[e.Name] = e.Samples
	}
	if buckets["kernel: copying data (user<->kernel, page cache)"] != 1 || buckets["copies (runtime.memmove)"] != 1 {
		t.Errorf("gateway buckets %v", buckets)
	}
	inclus := map[string]int{}
	for _, e := range gw.Inclus {
		inclus[e.Name] = e.Samples
	}
	if inclus["gRPC (google.golang.org/grpc, x/net/http2)"] != 1 || inclus["net/http"] != 1 || inclus["syscalls (syscall, internal/poll)"] != 1 {
		t.Errorf("gateway inclusive %v", inclus)
	}
	if got := p.Procs[1].Buckets[0].Name; got != "GC" {
		t.Errorf("index sample in %q, want GC", got)
	}
}

func TestClassify(t *testing.T) {
	tests := []struct {
		stack []string
		want  string
	}{
		{[]string{"[k] tcp_sendmsg", "syscall.Syscall"}, "kernel: TCP/loopback, VFS, scheduling"},
		{[]string{"crypto/internal/fips140/sha256.blockAVX2", "crypto/sha256.(*Digest).Write"}, "hashing (sha256)"},
		{[]string{"runtime.memclrNoHeapPointers", "runtime.mallocgc"}, "allocation (mallocgc, zeroing)"},
		{[]string{"google.golang.org/protobuf/internal/impl.consumeBytes"}, "protobuf (un)marshal"},
		{[]string{"runtime.futex", "runtime.findRunnable", "runtime.schedule"}, "Go scheduler and runtime"},
		{[]string{"main.work"}, "other user code"},
	}
	for _, tt := range tests {
		if got := Classify(tt.stack); got != tt.want {
			t.Errorf("Classify(%v) = %q, want %q", tt.stack, got, tt.want)
		}
	}
}
