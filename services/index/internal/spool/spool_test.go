package spool_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nixcache/nixcache/services/index/internal/narstore"
	"github.com/nixcache/nixcache/services/index/internal/spool"
)

// start serves a spool of at most max files on a socket in a fresh
// directory; discarded receives the name of every file it removed.
func start(t *testing.T, max int) (sock string, sp *spool.Server, discarded chan string) {
	t.Helper()
	store, err := narstore.Open(t.TempDir(), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	discarded = make(chan string, 16)
	sp = spool.New(slog.New(slog.DiscardHandler), store.SpoolFile, func(f *os.File) {
		narstore.Discard(f)
		discarded <- f.Name()
	}, 1<<20, max)
	sock = filepath.Join(t.TempDir(), "spool.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- sp.Serve(lis) }()
	t.Cleanup(func() {
		sp.Close()
		lis.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return sock, sp, discarded
}

// grant is what a gateway gets from the socket.
type grant struct {
	conn *net.UnixConn
	line string
	file *os.File // nil without a descriptor
}

func ask(t *testing.T, sock string) grant {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	conn := c.(*net.UnixConn)
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf, oob := make([]byte, 512), make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
	if err != nil {
		t.Fatal(err)
	}
	g := grant{conn: conn, line: strings.TrimSuffix(string(buf[:n]), "\n")}
	if oobn > 0 {
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil || len(msgs) != 1 {
			t.Fatalf("control messages %v: %v", msgs, err)
		}
		fds, err := unix.ParseUnixRights(&msgs[0])
		if err != nil || len(fds) != 1 {
			t.Fatalf("descriptors %v: %v", fds, err)
		}
		g.file = os.NewFile(uintptr(fds[0]), "spooled")
	}
	return g
}

func (g grant) id(t *testing.T) string {
	t.Helper()
	f := strings.Fields(g.line)
	if len(f) != 3 || f[0] != "ok" || f[2] != "1048576" || g.file == nil {
		t.Fatalf("grant %q (descriptor %v): want ok <id> 1048576 and a descriptor", g.line, g.file != nil)
	}
	return f[1]
}

func TestHandOutWriteClaim(t *testing.T) {
	sock, sp, _ := start(t, 4)
	g := ask(t, sock)
	id := g.id(t)
	if _, err := io.WriteString(g.file, "the upload"); err != nil {
		t.Fatal(err)
	}
	g.file.Close()
	if n := sp.Outstanding(); n != 1 {
		t.Errorf("Outstanding = %d, want 1", n)
	}
	f, ok := sp.Claim(context.Background(), id)
	if !ok {
		t.Fatal("Claim found no file")
	}
	defer narstore.Discard(f)
	got, err := io.ReadAll(f)
	if err != nil || string(got) != "the upload" {
		t.Errorf("claimed file reads %q, %v; want what the gateway wrote", got, err)
	}
	if _, ok := sp.Claim(context.Background(), id); ok {
		t.Error("the same id claimed twice")
	}
	if _, ok := sp.Claim(context.Background(), "0123456789abcdef0123456789abcdef"); ok {
		t.Error("an id never handed out claimed")
	}
	if n := sp.Outstanding(); n != 0 {
		t.Errorf("Outstanding after the claim = %d, want 0", n)
	}
}

// TestHangUpRemovesUnclaimed: a file whose gateway hangs up before any
// claim is removed, and cannot be claimed.
func TestHangUpRemovesUnclaimed(t *testing.T) {
	sock, sp, discarded := start(t, 4)
	g := ask(t, sock)
	id := g.id(t)
	if _, err := io.WriteString(g.file, "abandoned"); err != nil {
		t.Fatal(err)
	}
	g.file.Close()
	g.conn.Close()
	select {
	case name := <-discarded:
		if _, err := os.Stat(name); !os.IsNotExist(err) {
			t.Errorf("discarded file %s: stat %v, want it gone", name, err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the file of a connection that ended was not removed")
	}
	if _, ok := sp.Claim(context.Background(), id); ok {
		t.Error("a removed file was claimed")
	}
}

// TestBusy: past max connections at once, the index refuses with a busy
// line and no descriptor; a slot given back serves again.
func TestBusy(t *testing.T) {
	sock, _, discarded := start(t, 1)
	first := ask(t, sock)
	first.id(t)
	second := ask(t, sock)
	if !strings.HasPrefix(second.line, "busy ") || !strings.Contains(second.line, "-max-concurrent-uploads") || second.file != nil {
		t.Errorf("second at once: %q (descriptor %v), want a busy line naming -max-concurrent-uploads and no descriptor", second.line, second.file != nil)
	}
	first.file.Close()
	first.conn.Close()
	<-discarded
	// The slot is given back once the first connection's goroutine
	// ends, just after it discarded the file: a refusal in between is
	// asked again.
	for deadline := time.Now().Add(10 * time.Second); ; {
		g := ask(t, sock)
		if strings.HasPrefix(g.line, "ok ") {
			g.id(t)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the first hung up: %q, want a file", g.line)
		}
	}
}

// TestCloseRemovesOutstanding: at shutdown a file handed out and not
// claimed is removed before Close returns.
func TestCloseRemovesOutstanding(t *testing.T) {
	sock, sp, discarded := start(t, 4)
	g := ask(t, sock)
	g.id(t)
	g.file.Close()
	sp.Close()
	select {
	case name := <-discarded:
		if _, err := os.Stat(name); !os.IsNotExist(err) {
			t.Errorf("file %s after Close: stat %v, want it gone", name, err)
		}
	default:
		t.Fatal("Close returned with a file handed out and not removed")
	}
	if n := sp.Outstanding(); n != 0 {
		t.Errorf("Outstanding after Close = %d", n)
	}
}

// TestClaimCancelled: a claim whose caller left gets nothing, and the file
// is removed.
func TestClaimCancelled(t *testing.T) {
	sock, sp, discarded := start(t, 4)
	g := ask(t, sock)
	id := g.id(t)
	g.file.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	// The file was sent before the claim: a claim may still win the race
	// with the cancelled context; either way the file ends up removed.
	if f, ok := sp.Claim(ctx, id); ok {
		narstore.Discard(f)
		return
	}
	select {
	case <-discarded:
	case <-time.After(10 * time.Second):
		t.Fatal("the file of a cancelled claim was not removed")
	}
}
