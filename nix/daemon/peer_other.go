//go:build !unix

package daemon

// peerClosed cannot peek at sockets here; a connection the daemon closed
// fails on first use instead.
func (c *Conn) peerClosed() bool { return !c.usable() }
