package daemon

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// serveIsValid answers IsValidPath requests until the client hangs up:
// pathA is valid; for pathB the fake hangs up mid-reply; for drvA it
// stops answering.
func serveIsValid(f *fake) {
	f.handshake(MaxVersion, MaxVersion, nil, nil)
	for {
		f.flush()
		op, err := f.r.uint64()
		if err != nil {
			return // the client hung up
		}
		if op != opIsValidPath {
			f.failf("operation %d, want IsValidPath", op)
		}
		p, err := f.r.string(maxString, "path")
		if err != nil {
			f.failf("read path: %v", err)
		}
		switch p {
		case pathB:
			f.word(stderrNext)
			return
		case drvA:
			f.expectHangUp()
			return
		}
		f.last()
		f.word(1)
	}
}

func newTestPool(t *testing.T, size int, script func(*fake)) (*Pool, func() int) {
	t.Helper()
	socket, accepted := fakeSocket(t, script)
	p, err := NewPool(socket, size)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p, accepted
}

func isValid(ctx context.Context, c *Conn) error {
	ok, err := c.IsValidPath(ctx, pathA)
	if err == nil && !ok {
		err = errors.New("IsValidPath = false")
	}
	return err
}

func TestPoolReuses(t *testing.T) {
	p, accepted := newTestPool(t, 2, serveIsValid)
	ctx := testCtx(t)
	for range 10 {
		if err := p.Do(ctx, func(c *Conn) error { return isValid(ctx, c) }); err != nil {
			t.Fatal(err)
		}
	}
	if n := accepted(); n != 1 {
		t.Errorf("%d connections for 10 queries in a row, want 1", n)
	}
}

func TestPoolLimit(t *testing.T) {
	p, accepted := newTestPool(t, 2, serveIsValid)
	ctx := testCtx(t)
	c1, err := p.Get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c2, err := p.Get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if c, err := p.Get(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("third Get from a pool of 2 = %v, %v; want it to wait until its deadline", c, err)
	}
	p.Put(c1)
	c3, err := p.Get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if c3 != c1 {
		t.Error("Get after Put did not reuse the idle connection")
	}
	if err := isValid(ctx, c3); err != nil {
		t.Error(err)
	}
	p.Put(c2)
	p.Put(c3)
	if n := accepted(); n != 2 {
		t.Errorf("%d connections, want 2", n)
	}
}

func TestPoolDiscardsFailed(t *testing.T) {
	for _, tc := range []struct {
		name string
		use  func(*Conn) error
		want error
	}{
		{"daemon hangs up", func(c *Conn) error {
			_, err := c.IsValidPath(context.Background(), pathB)
			return err
		}, nil},
		{"cancelled mid-operation", func(c *Conn) error {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
			defer cancel()
			_, err := c.IsValidPath(ctx, drvA)
			return err
		}, context.DeadlineExceeded},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, accepted := newTestPool(t, 1, serveIsValid)
			ctx := testCtx(t)
			c, err := p.Get(ctx)
			if err != nil {
				t.Fatal(err)
			}
			err = tc.use(c)
			if err == nil || (tc.want != nil && !errors.Is(err, tc.want)) {
				t.Fatalf("error %v, want %v", err, tc.want)
			}
			p.Put(c)
			c2, err := p.Get(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer p.Put(c2)
			if c2 == c {
				t.Error("the pool kept a failed connection")
			}
			if err := isValid(ctx, c2); err != nil {
				t.Error(err)
			}
			if n := accepted(); n != 2 {
				t.Errorf("%d connections, want 2", n)
			}
		})
	}
}

func TestPoolDropsConnClosedByDaemon(t *testing.T) {
	hungUp := make(chan struct{}, 1)
	p, accepted := newTestPool(t, 1, func(f *fake) {
		f.handshake(MaxVersion, MaxVersion, nil, nil)
		callIsValid.req(f, MaxVersion)
		f.last()
		f.word(1)
		f.flush()
		f.nc.Close() // as a daemon that restarts
		hungUp <- struct{}{}
	})
	ctx := testCtx(t)
	if err := p.Do(ctx, func(c *Conn) error { return isValid(ctx, c) }); err != nil {
		t.Fatal(err)
	}
	<-hungUp
	if err := p.Do(ctx, func(c *Conn) error { return isValid(ctx, c) }); err != nil {
		t.Fatalf("query after the daemon closed the idle connection: %v", err)
	}
	if n := accepted(); n != 2 {
		t.Errorf("%d connections, want 2", n)
	}
}

func TestPoolConcurrent(t *testing.T) {
	const size = 3
	p, accepted := newTestPool(t, size, serveIsValid)
	ctx := testCtx(t)
	var inUse, most atomic.Int32
	var wg sync.WaitGroup
	for range 40 {
		wg.Go(func() {
			err := p.Do(ctx, func(c *Conn) error {
				n := inUse.Add(1)
				defer inUse.Add(-1)
				for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
				}
				return isValid(ctx, c)
			})
			if err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if m := most.Load(); m > size {
		t.Errorf("%d connections in use at once, more than the pool's %d", m, size)
	}
	if n := accepted(); n > size {
		t.Errorf("%d connections made, more than the pool's %d", n, size)
	}
}

func TestPoolClose(t *testing.T) {
	p, _ := newTestPool(t, 2, serveIsValid)
	ctx := testCtx(t)
	idle, err := p.Get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	busy, err := p.Get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	p.Put(idle)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if idle.usable() {
		t.Error("Close left an idle connection open")
	}
	if _, err := p.Get(ctx); !errors.Is(err, ErrPoolClosed) {
		t.Errorf("Get after Close: %v, want ErrPoolClosed", err)
	}
	if err := isValid(ctx, busy); err != nil {
		t.Errorf("a connection in use when the pool closed: %v", err)
	}
	p.Put(busy)
	if busy.usable() {
		t.Error("Put after Close did not close the connection")
	}
}
