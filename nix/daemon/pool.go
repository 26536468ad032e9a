package daemon

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// ErrPoolClosed is returned by Get after Close.
var ErrPoolClosed = errors.New("nix daemon pool closed")

// Pool shares at most a fixed number of connections to one daemon among
// goroutines. Connections are dialled when needed and kept idle between
// uses; one that failed, or whose daemon hung up while it was idle, is
// discarded. Each connection is a process of the daemon's.
type Pool struct {
	socket string
	opts   []Option
	slots  chan struct{} // a token per connection in use

	mu     sync.Mutex
	idle   []*Conn
	closed bool
}

// NewPool returns a pool of at most size connections (at least 1) to the
// daemon on socketPath, dialled with opts.
func NewPool(socketPath string, size int, opts ...Option) (*Pool, error) {
	if _, err := buildOptions(opts); err != nil {
		return nil, fmt.Errorf("nix daemon pool: %w", err)
	}
	return &Pool{
		socket: socketPath,
		opts:   opts,
		slots:  make(chan struct{}, max(size, 1)),
	}, nil
}

// Get returns a connection for the caller's sole use, waiting while all
// are in use; give it back with Put. ctx bounds the wait and the dial.
func (p *Pool) Get(ctx context.Context) (*Conn, error) {
	select {
	case p.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("wait for a nix daemon connection: %w", ctx.Err())
	}
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			<-p.slots
			return nil, ErrPoolClosed
		}
		n := len(p.idle)
		if n == 0 {
			p.mu.Unlock()
			break
		}
		c := p.idle[n-1]
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		if !c.peerClosed() {
			return c, nil
		}
		c.Close() // the daemon went away (restarted?) while c was idle
	}
	c, err := Dial(ctx, p.socket, p.opts...)
	if err != nil {
		<-p.slots
		return nil, err
	}
	return c, nil
}

// Put gives back a connection Get returned; the caller must not use it
// again. A connection an error closed is discarded.
func (p *Pool) Put(c *Conn) {
	p.mu.Lock()
	keep := c.usable() && !p.closed
	if keep {
		p.idle = append(p.idle, c)
	}
	p.mu.Unlock()
	if !keep {
		c.Close()
	}
	<-p.slots
}

// Do runs fn with a connection from the pool.
func (p *Pool) Do(ctx context.Context, fn func(*Conn) error) error {
	c, err := p.Get(ctx)
	if err != nil {
		return err
	}
	defer p.Put(c)
	return fn(c)
}

// Close closes the idle connections, and those in use as they are put
// back; Get then fails.
func (p *Pool) Close() error {
	p.mu.Lock()
	idle := p.idle
	p.idle, p.closed = nil, true
	p.mu.Unlock()
	var errs []error
	for _, c := range idle {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}
