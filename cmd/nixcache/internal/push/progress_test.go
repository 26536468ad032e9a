package push

import (
	"strings"
	"testing"
	"time"
)

func TestPrinter(t *testing.T) {
	var b strings.Builder
	Printer(&b)(Progress{Paths: 10, PathsDone: 3, Bytes: 100 << 20, BytesDone: 25 << 20, Start: time.Now().Add(-5 * time.Second)})
	got := b.String()
	// 25 MiB in 5 s: 5 MiB/s, 75 MiB left: 15 s.
	for _, want := range []string{"\r\033[K", "3/10 paths", "25.0 MiB/100.0 MiB", "5.0 MiB/s", "15s left"} {
		if !strings.Contains(got, want) {
			t.Errorf("progress line %q lacks %q", got, want)
		}
	}
	if strings.Contains(got, "\n") {
		t.Errorf("progress line %q has a newline: it must redraw in place", got)
	}
}

func TestSize(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1536: "1.5 KiB", 5 << 30: "5.0 GiB"} {
		if got := Size(n); got != want {
			t.Errorf("Size(%d) = %q, want %q", n, got, want)
		}
	}
}
