package e2e

import (
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"testing"
	"time"
)

// TestSlowloris: a client that sends its headers one byte at a time is cut
// off by the gateway's -read-header-timeout, while others are served.
func TestSlowloris(t *testing.T) {
	const headerTimeout = time.Second
	c := newCluster(t, withArgs("gateway", "-read-header-timeout", headerTimeout.String()))
	conn, err := net.Dial("tcp", c.httpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	closed := make(chan error, 1)
	go func() {
		// Whatever the server says (a 408 or nothing), it must end with
		// the connection closed.
		_, err := io.Copy(io.Discard, conn)
		closed <- err
	}()
	if _, err := io.WriteString(conn, "GET /nix-cache-info HTTP/1.1\r\nHost: cache\r\nX-Slow: "); err != nil {
		t.Fatal(err)
	}
	// The slow client's pace is what is under test, not synchronisation.
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	// The default timeout is 10 s: well before, the connection must be gone.
	deadline := time.After(8 * time.Second)
	for done := false; !done; {
		select {
		case err := <-closed:
			if err != nil && !errors.Is(err, net.ErrClosed) {
				t.Logf("slow connection ended: %v", err)
			}
			done = true
		case <-tick.C:
			conn.Write([]byte("a")) // fails once the server has closed; the reader reports it
			// Meanwhile, a normal client is served.
			if st := httpStatus(t, "GET", c.URL+"/nix-cache-info", "", nil); st != http.StatusOK {
				t.Fatalf("GET /nix-cache-info during slowloris: %d", st)
			}
		case <-deadline:
			t.Fatalf("a client sending a header byte every 200ms is still connected after %s (read header timeout %s)", time.Since(start), headerTimeout)
		}
	}
	if el := time.Since(start); el < headerTimeout {
		t.Errorf("slow connection closed after %s, before the header timeout %s", el, headerTimeout)
	}
}

// TestIdleConnections: thousands of connections that send nothing do not
// keep the gateway from serving normal requests.
func TestIdleConnections(t *testing.T) {
	const idle = 2000
	c := newCluster(t)
	conns := make([]net.Conn, 0, idle)
	defer func() {
		for _, cn := range conns {
			cn.Close()
		}
	}()
	for range idle {
		cn, err := net.DialTimeout("tcp", c.httpAddr, 5*time.Second)
		if err != nil {
			t.Fatalf("after %d idle connections: %v", len(conns), err)
		}
		conns = append(conns, cn)
	}
	var wg sync.WaitGroup
	errs := make(chan string, 64)
	for range 64 {
		wg.Go(func() {
			client := &http.Client{Timeout: 5 * time.Second}
			resp, err := client.Get(c.URL + "/nix-cache-info")
			if err != nil {
				errs <- err.Error()
				return
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				errs <- resp.Status
			}
		})
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Errorf("GET /nix-cache-info with %d idle connections open: %s", idle, e)
	}
	// The idle connections are still open (not dropped to make room):
	// the gateway only closes them at its header timeout.
	conns[0].SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if _, err := conns[0].Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("idle connection: %v, want still open", err)
	}
}
