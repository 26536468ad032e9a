//go:build unix

package daemon

import (
	"errors"
	"syscall"
)

// peerClosed reports whether the daemon closed an idle connection (or sent
// something unasked, which makes it as useless), by peeking at the socket
// without blocking.
func (c *Conn) peerClosed() bool {
	if !c.usable() {
		return true
	}
	if c.r.r.Buffered() > 0 {
		return true
	}
	sc, ok := c.nc.(syscall.Conn)
	if !ok {
		return false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return true
	}
	closed := false
	err = raw.Read(func(fd uintptr) bool {
		var b [1]byte
		n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		closed = n > 0 || (err == nil && n == 0) || (err != nil && !errors.Is(err, syscall.EAGAIN) && !errors.Is(err, syscall.EINTR))
		return true // never wait for readiness
	})
	return closed || err != nil
}
