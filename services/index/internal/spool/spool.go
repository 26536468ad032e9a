// Package spool hands a co-located gateway files to write NAR uploads
// into (the index's -upload-spool socket), so that an upload's bytes go
// from the client's connection to the disk once, and cross no socket
// between the gateway and the index.
//
// The exchange, on a Unix socket only the services' user can reach:
//
//	gateway connects
//	index:   "ok <id> <limit>\n" and, with it (SCM_RIGHTS), a descriptor
//	         of an empty file of its own, open for writing; limit is the
//	         largest file it takes (-max-nar-size)
//	         (or "busy <reason>\n", past the files it hands out at once,
//	         or "error <reason>\n", and no descriptor)
//	gateway: opens PutNar with spool_id <id>, writes the upload into the
//	         descriptor, closes it, and ends the call (no chunks)
//	gateway: hangs up once PutNar has answered
//
// The file is the index's (mode 0600 in its tmp/), verified by the index
// (narstore.IngestSpooled) only once no descriptor open for writing is
// left. That does not keep out a hostile gateway (see narstore's
// spool.go): the spool is for a gateway that runs as the index's user.
// A file nobody claimed is removed when its connection ends.
package spool

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Create makes an empty file to spool one upload into, open for writing
// (handed to the gateway) and for reading (kept for the claim).
type Create func() (w, r *os.File, err error)

// Server hands out spool files and keeps them until claimed.
type Server struct {
	log     *slog.Logger
	create  Create
	discard func(*os.File)
	limit   uint64
	// slots bounds the connections served at once (each may hold a file).
	slots chan struct{}

	// wg counts the goroutines that may still remove a file: Close
	// waits for them.
	wg sync.WaitGroup

	mu    sync.Mutex
	files map[string]*entry // unclaimed files by id
	conns map[net.Conn]struct{}
	done  bool
}

// New is a server making its files with create, removing unclaimed ones
// with discard, telling the gateway limit (the largest file taken), and
// serving at most max connections at once (more are refused with an
// error line; the gateway then streams the upload).
func New(log *slog.Logger, create Create, discard func(*os.File), limit uint64, max int) *Server {
	if max < 1 {
		max = 1
	}
	return &Server{log: log, create: create, discard: discard, limit: limit, slots: make(chan struct{}, max),
		files: map[string]*entry{}, conns: map[net.Conn]struct{}{}}
}

// Serve serves lis until Close, and closes it: gateways then find no
// spool and stream. lis must be a Unix socket's. An error accepting a
// connection (out of descriptors) is waited out, as net/http does.
func (s *Server) Serve(lis net.Listener) error {
	defer lis.Close()
	var delay time.Duration
	for {
		conn, err := lis.Accept()
		if err != nil {
			if s.closed() || errors.Is(err, net.ErrClosed) {
				return nil
			}
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log.Warn("upload spool: accept failed; retrying", "err", err, "retry_in", delay)
			time.Sleep(delay) // a pause before retrying, not synchronisation
			continue
		}
		delay = 0
		if !s.track(conn) {
			conn.Close()
			return nil
		}
	}
}

// Close ends every connection and waits until their unclaimed files are
// removed.
func (s *Server) Close() {
	s.mu.Lock()
	s.done = true
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

func (s *Server) closed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.done
}

// track starts serving c, unless the server is closed.
func (s *Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done {
		return false
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.serve(c)
	}()
	return true
}

// msgConn is what a Unix socket's connection offers for SCM_RIGHTS.
type msgConn interface {
	WriteMsgUnix(b, oob []byte, addr *net.UnixAddr) (n, oobn int, err error)
}

func (s *Server) serve(conn net.Conn) {
	defer func() {
		s.mu.Lock()
		delete(s.conns, conn)
		s.mu.Unlock()
		conn.Close()
	}()
	select {
	case s.slots <- struct{}{}:
		defer func() { <-s.slots }()
	default:
		// As a streamed upload past the bound is refused: the gateway
		// answers 503 with Retry-After.
		_, _ = fmt.Fprintf(conn, "busy too many uploads at once (the index takes %d, -max-concurrent-uploads): retry later\n", cap(s.slots))
		return
	}
	mc, ok := conn.(msgConn)
	if !ok {
		_, _ = io.WriteString(conn, "error not a Unix socket\n")
		return
	}
	id, err := newID()
	if err != nil {
		s.log.Error("upload spool: make an id", "err", err)
		return
	}
	w, r, err := s.create()
	if err != nil {
		s.log.Error("upload spool: make a file", "err", err)
		_, _ = io.WriteString(conn, "error the index could not make a spool file\n")
		return
	}
	e := &entry{r: r, sent: make(chan struct{})}
	s.mu.Lock()
	s.files[id] = e
	s.mu.Unlock()
	// Whatever happens, the file is the claimer's or removed when the
	// gateway hangs up.
	defer func() {
		if e, ok := s.take(id); ok {
			s.discard(e.r)
		}
	}()
	_, _, err = mc.WriteMsgUnix(fmt.Appendf(nil, "ok %s %d\n", id, s.limit), unix.UnixRights(int(w.Fd())), nil)
	// The index keeps no descriptor open for writing: the claim's read
	// lease needs the gateway's to be the last, and closed. The gateway
	// may claim before this goroutine gets here: Claim waits for sent.
	w.Close()
	close(e.sent)
	if err != nil {
		s.log.Warn("upload spool: hand out a file", "err", err)
		return
	}
	// The gateway hangs up once PutNar has answered (or it gave up); it
	// sends nothing.
	var b [1]byte
	for {
		if _, err := conn.Read(b[:]); err != nil {
			return
		}
	}
}

// Outstanding is how many files are handed out and not yet claimed.
func (s *Server) Outstanding() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.files)
}

// Claim takes the file handed out under id: it is the caller's from now
// on (read side, the gateway's descriptor perhaps still open); false: no
// such file, or ctx ended first.
func (s *Server) Claim(ctx context.Context, id string) (*os.File, bool) {
	e, ok := s.take(id)
	if !ok {
		return nil, false
	}
	select {
	case <-e.sent:
		return e.r, true
	case <-ctx.Done():
		// Handed out; its connection's goroutine closes its side soon.
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			<-e.sent
			s.discard(e.r)
		}()
		return nil, false
	}
}

// entry is a file handed out: its read side, and sent, closed once the
// index has closed its own descriptor open for writing.
type entry struct {
	r    *os.File
	sent chan struct{}
}

func (s *Server) take(id string) (*entry, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f, ok := s.files[id]
	if ok {
		delete(s.files, id)
	}
	return f, ok
}

func newID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return hex.EncodeToString(b[:]), nil
}
