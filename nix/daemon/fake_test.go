package daemon

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// fake is the daemon's end of a connection, scripted by a test: it checks
// what the client sends word by word and answers with whatever bytes the
// test wants, valid or not. It is our reading of the protocol; the tests
// against the real nix-daemon (daemon_test.go) keep that reading honest.
type fake struct {
	nc net.Conn
	r  reader
	w  writer

	mu  sync.Mutex
	err error // the first thing that went wrong on the daemon's side
}

func newFake(nc net.Conn) *fake {
	return &fake{
		nc: nc,
		r:  reader{r: bufio.NewReader(nc)},
		w:  writer{w: bufio.NewWriter(nc)},
	}
}

// errStop unwinds a fake's script after a failure.
var errStop = errors.New("fake daemon stopped")

func (f *fake) failf(format string, args ...any) {
	f.mu.Lock()
	if f.err == nil {
		f.err = fmt.Errorf(format, args...)
	}
	f.mu.Unlock()
	panic(errStop)
}

// run runs script in a goroutine and returns a function that waits for it
// and returns the first error the fake saw.
func (f *fake) run(script func(*fake)) (wait func() error) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer f.nc.Close()
		defer func() {
			if r := recover(); r != nil && r != errStop { //nolint:errorlint // a panic value, never wrapped
				panic(r)
			}
		}()
		script(f)
		f.flush()
	}()
	return func() error {
		<-done
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.err
	}
}

// expect reads a word the client must have sent, after sending what the
// script wrote so far.
func (f *fake) expect(want uint64, what string) {
	f.flush()
	got, err := f.r.uint64()
	if err != nil {
		f.failf("read %s: %v", what, err)
	}
	if got != want {
		f.failf("client sent %s %#x, want %#x", what, got, want)
	}
}

// expectString reads a string the client must have sent.
func (f *fake) expectString(want, what string) {
	f.flush()
	got, err := f.r.string(maxString, what)
	if err != nil {
		f.failf("read %s: %v", what, err)
	}
	if got != want {
		f.failf("client sent %s %q, want %q", what, got, want)
	}
}

func (f *fake) word(n uint64)       { f.w.uint64(n) }
func (f *fake) str(s string)        { f.w.string(s) }
func (f *fake) strs(list ...string) { f.w.strings(list) }
func (f *fake) raw(b []byte)        { f.w.w.Write(b) }
func (f *fake) last()               { f.word(stderrLast) }
func (f *fake) request(op uint64)   { f.expect(op, "operation") }
func (f *fake) requestPath(op uint64, p string) {
	f.request(op)
	f.expectString(p, "argument")
}

// flush sends what was written; a client that hung up is not an error.
func (f *fake) flush() {
	if err := f.w.w.Flush(); err != nil && !errors.Is(err, io.ErrClosedPipe) && !errors.Is(err, net.ErrClosed) {
		f.failf("flush: %v", err)
	}
}

// fakeVersion is the Nix version the fake announces (protocol >= 1.33).
const fakeVersion = "2.99.0-fake"

// handshake plays the daemon's side of the greeting: the client must
// advertise clientWant; the daemon speaks daemonVersion and, from 1.38,
// offers features. It then sends startup, a script of stderr messages
// ending the greeting (stderrLast if nil).
func (f *fake) handshake(clientWant, daemonVersion Version, features []string, startup func(*fake)) {
	f.expect(workerMagic1, "magic")
	f.expect(uint64(clientWant), "client version")
	f.word(workerMagic2)
	f.word(uint64(daemonVersion))
	f.flush()
	v := min(clientWant, daemonVersion)
	if v >= 1<<8|38 {
		f.expect(0, "client feature count")
		f.strs(features...)
		f.flush()
	}
	if v >= 1<<8|14 {
		f.expect(0, "CPU affinity")
	}
	if v >= 1<<8|11 {
		f.expect(0, "reserveSpace")
	}
	if v >= 1<<8|33 {
		f.str(fakeVersion)
	}
	if v >= 1<<8|35 {
		f.word(1) // trusted
	}
	if startup != nil {
		startup(f)
	} else {
		f.last()
	}
	f.flush()
}

// pipeConn returns a Conn to a fake daemon speaking version v (advertised
// as the client's too) with no startup messages, and the fake to script.
// script runs after the handshake; the test fails if the fake saw the
// client misbehave.
func pipeConn(t *testing.T, v Version, script func(*fake)) *Conn {
	t.Helper()
	c, err := dialFake(t, func(f *fake) {
		f.handshake(v, v, nil, nil)
		script(f)
	}, WithProtocolVersion(v))
	if err != nil {
		t.Fatalf("handshake with the fake daemon: %v", err)
	}
	return c
}

// dialFake connects a client with opts to a fake running script over
// net.Pipe.
func dialFake(t *testing.T, script func(*fake), opts ...Option) (*Conn, error) {
	t.Helper()
	client, server := net.Pipe()
	f := newFake(server)
	wait := f.run(script)
	t.Cleanup(func() {
		client.Close()
		if err := wait(); err != nil {
			t.Errorf("fake daemon: %v", err)
		}
	})
	o, err := buildOptions(opts)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return newConn(ctx, client, o)
}

// fakeSocket serves script to every connection made to a Unix socket in a
// temporary directory, and returns the socket's path and the number of
// connections accepted so far.
func fakeSocket(t *testing.T, script func(*fake)) (path string, accepted func() int) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "socket")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		n     int
		waits []func() error
	)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			f := newFake(nc)
			mu.Lock()
			n++
			waits = append(waits, f.run(script))
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, wait := range waits {
			if err := wait(); err != nil {
				t.Errorf("fake daemon: %v", err)
			}
		}
	})
	return path, func() int {
		mu.Lock()
		defer mu.Unlock()
		return n
	}
}
