package httpapi

import (
	"context"
	"net"
)

// The NAR bodies sent with sendfile (a stored file, a host path's dump)
// go out on a corked connection, as nginx sends files with tcp_nopush:
// while the cork is in, the kernel sends only full segments, so the
// answer's header rides with the body's first bytes and a dump's small
// writes between files are coalesced, instead of a short segment each
// (net/http sets TCP_NODELAY). On one connection that is a wake-up of
// the client fewer per answer, and on a VM a good part of the time of a
// small NAR. The cork comes out when the body is sent: what is left goes
// at once.

// connKey is the context key of the connection a request came on.
type connKey struct{}

// ConnContext is an http.Server's ConnContext: it keeps the connection
// in the request's context, for cork.
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, c)
}

// cork corks the TCP connection ctx's request came on (ConnContext),
// when it is one, and returns what takes the cork out again; it does
// nothing elsewhere (TLS, a Unix socket, a test's recorder, a system
// without TCP_CORK).
func cork(ctx context.Context) (uncork func()) {
	c, ok := ctx.Value(connKey{}).(*net.TCPConn)
	if !ok {
		return func() {}
	}
	raw, err := c.SyscallConn()
	if err != nil || !setCork(raw, true) {
		return func() {}
	}
	return func() { setCork(raw, false) }
}
