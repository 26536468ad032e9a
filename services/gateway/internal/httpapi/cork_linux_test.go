package httpapi

import (
	"bufio"
	"cmp"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// corked reads TCP_CORK of c.
func corked(t *testing.T, c net.Conn) bool {
	t.Helper()
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var serr error
	if err := raw.Control(func(fd uintptr) { v, serr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_CORK) }); err != nil {
		t.Fatal(err)
	}
	if serr != nil {
		t.Fatal(serr)
	}
	return v != 0
}

// TestCork: cork corks the request's TCP connection and its return value
// uncorks it; elsewhere it does nothing.
func TestCork(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	client, err := net.Dial("tcp", lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := lis.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()

	uncork := cork(ConnContext(context.Background(), server))
	if !corked(t, server) {
		t.Fatal("not corked by cork")
	}
	uncork()
	if corked(t, server) {
		t.Fatal("still corked after uncork")
	}

	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	cork(ConnContext(context.Background(), a))()
	cork(context.Background())()
}

// TestNarSentCorked: a NAR file and a host path's dump go out on a
// corked connection, uncorked once sent (else the last short segment of
// every answer would wait for the kernel's 200 ms timer).
func TestNarSentCorked(t *testing.T) {
	storeDir := t.TempDir()
	e := newEnv(t, func(c *Config) { c.NarDir, c.LocalStoreDir = t.TempDir(), storeDir })
	// Far larger than the socket buffers, made small on both ends: the
	// send blocks while the client reads nothing.
	p := e.addPath("big", 16<<20)
	hash, nar := e.addHostPath(t, storeDir, "host-tool", 8<<20)
	conns := make(chan net.Conn, 1)
	srv := httptest.NewUnstartedServer(e.h)
	srv.Config.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		if err := c.(*net.TCPConn).SetWriteBuffer(64 << 10); err != nil {
			t.Error(err)
		}
		conns <- c
		return ConnContext(ctx, c)
	}
	srv.Start()
	defer srv.Close()
	d := net.Dialer{Control: func(_, _ string, raw syscall.RawConn) error {
		var serr error
		err := raw.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 64<<10) })
		return cmp.Or(err, serr)
	}}
	c, err := d.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	server := <-conns
	br := bufio.NewReader(c)

	for _, tt := range []struct {
		name, path string
		size       int
	}{
		{"NAR file", "/nar/" + p.fileHash.NixBase32() + ".nar.xz", len(p.file)},
		{"dump", "/nar/" + hash + ".nar", len(nar)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", tt.path); err != nil {
				t.Fatal(err)
			}
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != 200 || resp.ContentLength != int64(tt.size) {
				t.Fatalf("status %d, Content-Length %d, want 200 and %d", resp.StatusCode, resp.ContentLength, tt.size)
			}
			// The server is in the middle of the body now.
			if !corked(t, server) {
				t.Error("the connection is not corked while the NAR is sent")
			}
			n, err := io.Copy(io.Discard, resp.Body)
			if err != nil || n != int64(tt.size) {
				t.Fatalf("body: %d bytes, %v; want %d", n, err, tt.size)
			}
			resp.Body.Close()
			// The next answer on the connection comes after the handler
			// of this one returned.
			if _, err := fmt.Fprintf(c, "GET /nix-cache-info HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			resp, err = http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if corked(t, server) {
				t.Error("the connection is still corked after the NAR was sent")
			}
		})
	}
}
