// Package load is the benchmark's HTTP client, the same for every server:
// narinfos fetched sequentially over one keep-alive connection, and NARs
// downloaded by N workers on a connection each, bodies counted and
// discarded, never decompressed.
package load

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nixcache/nixcache/nix/narinfo"
)

// readBuf is the size of the client's read buffer for bodies.
const readBuf = 256 << 10

// Conn is an HTTP client that keeps one connection to a server.
type Conn struct {
	client *http.Client
	// used counts the connections that carried a request. Not dials:
	// net/http may dial for a request while the connection it just read
	// a body from is on its way back to the pool, then send the request
	// on that one and keep the new one idle.
	used  atomic.Int64
	trace *httptrace.ClientTrace
	buf   []byte
}

// NewConn returns a client that opens connections lazily, keeps at most
// one idle, and counts how many carried requests.
func NewConn() *Conn {
	c := &Conn{buf: make([]byte, readBuf)}
	c.trace = &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		if !info.Reused {
			c.used.Add(1)
		}
	}}
	tr := &http.Transport{
		MaxIdleConns:        1,
		MaxIdleConnsPerHost: 1,
		DisableCompression:  true,
		IdleConnTimeout:     time.Minute,
		ReadBufferSize:      readBuf,
		WriteBufferSize:     4 << 10,
	}
	c.client = &http.Client{Transport: tr}
	return c
}

// Conns is the number of connections that carried a request.
func (c *Conn) Conns() int64 { return c.used.Load() }

// Close closes idle connections.
func (c *Conn) Close() { c.client.CloseIdleConnections() }

// Get fetches url, reads the body into a reused buffer and returns its
// size; keep, when not nil, receives the body (for small ones). Any
// status but 200, or a body of another length than Content-Length, is an
// error.
func (c *Conn) Get(ctx context.Context, url string, keep *strings.Builder) (int64, error) {
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, c.trace), http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var n int64
	for {
		m, err := resp.Body.Read(c.buf)
		if keep != nil {
			keep.Write(c.buf[:m])
		}
		n += int64(m)
		if err == io.EOF {
			break
		}
		if err != nil {
			return n, fmt.Errorf("GET %s: after %d bytes: %w", url, n, err)
		}
	}
	if resp.StatusCode != http.StatusOK {
		return n, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	if resp.ContentLength >= 0 && n != resp.ContentLength {
		return n, fmt.Errorf("GET %s: %d bytes, Content-Length %d", url, n, resp.ContentLength)
	}
	return n, nil
}

// Nar is one NAR file of a cache: its URL (absolute) and size.
type Nar struct {
	URL  string
	Size uint64
}

// Narinfos fetches and parses the narinfo of every hash part from base,
// sequentially on one connection, and returns the NARs they name.
func Narinfos(ctx context.Context, base string, hashes []string) ([]Nar, error) {
	c := NewConn()
	defer c.Close()
	nars := make([]Nar, 0, len(hashes))
	for _, h := range hashes {
		var body strings.Builder
		if _, err := c.Get(ctx, base+"/"+h+".narinfo", &body); err != nil {
			return nil, err
		}
		ni, err := narinfo.Parse(strings.NewReader(body.String()), "/nix/store")
		if err != nil {
			return nil, fmt.Errorf("narinfo %s from %s: %w", h, base, err)
		}
		size := ni.FileSize
		if size == 0 {
			size = ni.NarSize
		}
		nars = append(nars, Nar{URL: base + "/" + ni.URL, Size: size})
	}
	return nars, nil
}

// Timing is the outcome of one timed pass.
type Timing struct {
	Total     time.Duration
	Latencies []time.Duration // per request, in order (narinfo passes)
	Bytes     int64
	Conns     int64 // connections that carried requests
}

// NarinfoPass GETs the narinfo of each hash part sequentially over one
// keep-alive connection, which it opens (untimed) with a first request for
// /nix-cache-info.
func NarinfoPass(ctx context.Context, base string, hashes []string) (Timing, error) {
	urls := make([]string, len(hashes))
	for i, h := range hashes {
		urls[i] = base + "/" + h + ".narinfo"
	}
	return SequentialPass(ctx, base, urls)
}

// SequentialPass GETs each URL in turn over one keep-alive connection,
// which it opens (untimed) with a first request for base/nix-cache-info.
func SequentialPass(ctx context.Context, base string, urls []string) (Timing, error) {
	c := NewConn()
	defer c.Close()
	if _, err := c.Get(ctx, base+"/nix-cache-info", nil); err != nil {
		return Timing{}, err
	}
	t := Timing{Latencies: make([]time.Duration, len(urls))}
	start := time.Now()
	last := start
	for i, u := range urls {
		n, err := c.Get(ctx, u, nil)
		if err != nil {
			return Timing{}, err
		}
		now := time.Now()
		t.Latencies[i] = now.Sub(last)
		last = now
		t.Bytes += n
	}
	t.Total = time.Since(start)
	t.Conns = c.Conns()
	if t.Conns != 1 {
		return t, fmt.Errorf("sequential pass on %s used %d connections, want 1 (keep-alive broken?)", base, t.Conns)
	}
	return t, nil
}

// NarPass downloads every NAR once with conns workers, each on its own
// keep-alive connection (opened untimed with a request for
// /nix-cache-info), taking NARs from one queue in order.
func NarPass(ctx context.Context, base string, nars []Nar, conns int) (Timing, error) {
	clients := make([]*Conn, conns)
	for i := range clients {
		clients[i] = NewConn()
		defer clients[i].Close()
		if _, err := clients[i].Get(ctx, base+"/nix-cache-info", nil); err != nil {
			return Timing{}, err
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		next     atomic.Int64
		total    atomic.Int64
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	start := time.Now()
	for _, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(len(nars)) || ctx.Err() != nil {
					return
				}
				n, err := c.Get(ctx, nars[i].URL, nil)
				if err == nil && uint64(n) != nars[i].Size {
					err = fmt.Errorf("GET %s: %d bytes, the narinfo says %d", nars[i].URL, n, nars[i].Size)
				}
				if err != nil {
					errOnce.Do(func() { firstErr = err; cancel() })
					return
				}
				total.Add(n)
			}
		}()
	}
	wg.Wait()
	t := Timing{Total: time.Since(start), Bytes: total.Load()}
	if firstErr != nil {
		return t, firstErr
	}
	for _, c := range clients {
		t.Conns += c.Conns()
	}
	if t.Conns != int64(conns) {
		return t, fmt.Errorf("NAR pass on %s with %d workers used %d connections (keep-alive broken, or a transfer cut?)", base, conns, t.Conns)
	}
	return t, nil
}
