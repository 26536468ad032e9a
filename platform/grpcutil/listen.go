package grpcutil

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// unixPrefix starts an address that names a Unix socket, as gRPC's own
// targets do ("unix:relative/path", "unix:///absolute/path").
const unixPrefix = "unix:"

// SocketPath returns the path of the Unix socket addr names, and whether
// it names one: "unix:data/index.sock" and "unix:///run/x.sock" do,
// "127.0.0.1:5011" does not.
func SocketPath(addr string) (string, bool) {
	rest, ok := strings.CutPrefix(addr, unixPrefix)
	if !ok {
		return "", false
	}
	// unix:///abs: an empty authority.
	return strings.TrimPrefix(rest, "//"), true
}

// ListenConfig is where a gRPC server listens: a Unix socket only the
// service's own user can connect to (the default of every service), or a
// TCP address, which must serve mutual TLS unless InsecureTCP says
// otherwise.
type ListenConfig struct {
	// Addr is "unix:PATH" or a TCP host:port.
	Addr string
	// InsecureTCP allows a TCP address without mutual TLS.
	InsecureTCP bool
}

// ListenFlags registers -listen (default def) and -insecure-tcp on fs.
func ListenFlags(fs *flag.FlagSet, def string) *ListenConfig {
	c := &ListenConfig{}
	fs.StringVar(&c.Addr, "listen", def, "gRPC listen address: unix:PATH, a Unix socket (mode 0600) only this service's user (and root) can connect to, or host:port, which needs mutual TLS (-tls-cert, -tls-key, -tls-client-ca) unless -insecure-tcp")
	fs.BoolVar(&c.InsecureTCP, "insecure-tcp", false, "allow a TCP -listen address without mutual TLS: every process that reaches the port can call every method (behind a private network only); a warning at start says so")
	return c
}

// Listen opens the listener c names. A TCP address without mutual TLS
// (tls not enabled) is refused unless c.InsecureTCP, and then logged as a
// warning. A Unix socket is made with mode 0600 (its directory, created
// 0700 when missing); a stale socket file left by a crash is replaced, a
// live one is an error. The connections of a Unix socket know their
// peer's uid and pid (Caller).
func (c ListenConfig) Listen(tls *TLSFiles, log *slog.Logger) (net.Listener, error) {
	if path, ok := SocketPath(c.Addr); ok {
		return listenUnix(path)
	}
	if !tls.Enabled() {
		if !c.InsecureTCP {
			return nil, fmt.Errorf("-listen %s is TCP without mutual TLS: any process that reaches it could call this service; "+
				"listen on a Unix socket (-listen unix:PATH), turn on mutual TLS (-tls-cert, -tls-key, -tls-client-ca), "+
				"or accept the risk with -insecure-tcp", c.Addr)
		}
		log.Warn("serving gRPC over plain TCP without mutual TLS (-insecure-tcp): every process that reaches this address can call every method", "addr", c.Addr)
	}
	lis, err := net.Listen("tcp", c.Addr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", c.Addr, err)
	}
	return lis, nil
}

func listenUnix(path string) (net.Listener, error) {
	if path == "" {
		return nil, errors.New("listen unix: empty socket path")
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("listen unix %s: %w", path, err)
	}
	if err := removeStaleSocket(path); err != nil {
		return nil, err
	}
	// The socket is made with no permission for group and others, so no
	// other user can connect even for the moment before the chmod below.
	// Listen runs at start, before the services make other files.
	old := syscall.Umask(0o177)
	lis, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listen unix %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		lis.Close()
		return nil, fmt.Errorf("listen unix %s: %w", path, err)
	}
	return peerCredListener{lis.(*net.UnixListener)}, nil
}

// removeStaleSocket removes the socket file at path when nothing serves
// on it (a crashed service's); a live socket, or a file that is not a
// socket, is an error.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("listen unix %s: %w", path, err)
	case fi.Mode().Type() != os.ModeSocket:
		return fmt.Errorf("listen unix %s: the file exists and is not a socket", path)
	}
	conn, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		conn.Close()
		return fmt.Errorf("listen unix %s: another process serves on it", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("listen unix %s: remove the stale socket: %w", path, err)
	}
	return nil
}

// PeerCred is the remote address of a connection to a Unix socket: the
// process at the other end, as the kernel tells it (SO_PEERCRED).
type PeerCred struct {
	PID, UID, GID int
}

func (p PeerCred) Network() string { return "unix" }
func (p PeerCred) String() string {
	return fmt.Sprintf("unix peer pid=%d uid=%d gid=%d", p.PID, p.UID, p.GID)
}

// peerCredListener is a Unix listener whose connections' RemoteAddr is
// their peer's PeerCred, which gRPC hands to the handlers (peer.Peer.Addr).
type peerCredListener struct {
	*net.UnixListener
}

func (l peerCredListener) Accept() (net.Conn, error) {
	for {
		conn, err := l.AcceptUnix()
		if err != nil {
			return nil, err
		}
		cred, err := peerCred(conn)
		if err != nil {
			// Without the kernel's word on the peer the connection is
			// not served (the audit trail names every caller); an error
			// here would stop the gRPC server, so the next one is taken.
			conn.Close()
			continue
		}
		return peerCredConn{conn, cred}, nil
	}
}

type peerCredConn struct {
	*net.UnixConn
	cred PeerCred
}

func (c peerCredConn) RemoteAddr() net.Addr { return c.cred }

// Caller describes who made the gRPC call of ctx, for audit logs: the
// subject of its client certificate under mutual TLS, the uid and pid of
// the process on a Unix socket, else its network address.
func Caller(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return "unknown"
	}
	if info, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(info.State.PeerCertificates) > 0 {
		return "tls client " + info.State.PeerCertificates[0].Subject.String()
	}
	if p.Addr == nil {
		return "unknown"
	}
	return p.Addr.String()
}

// SpoolAuto is the -upload-spool value that puts the index's upload
// spool socket beside its gRPC Unix socket.
const SpoolAuto = "auto"

// SpoolSocket is the path of the index's upload spool socket that an
// -upload-spool flag names, given grpcAddr, the index's gRPC address
// (the index's -listen, a gateway's -index-addr): "unix:PATH" is PATH;
// "auto" (SpoolAuto) is upload-spool.sock beside a Unix grpcAddr, and
// none beside a TCP one (an index across the network shares no disk);
// "" is none.
func SpoolSocket(flagValue, grpcAddr string) (string, error) {
	switch {
	case flagValue == "":
		return "", nil
	case flagValue == SpoolAuto:
		if p, ok := SocketPath(grpcAddr); ok {
			return filepath.Join(filepath.Dir(p), "upload-spool.sock"), nil
		}
		return "", nil
	}
	if p, ok := SocketPath(flagValue); ok && p != "" {
		return p, nil
	}
	return "", fmt.Errorf("-upload-spool %q: want unix:PATH, %q or empty", flagValue, SpoolAuto)
}

// ListenSocket listens on the Unix socket at path as Listen does
// (mode 0600, a stale socket replaced), for a service beside gRPC.
func ListenSocket(path string) (net.Listener, error) {
	return listenUnix(path)
}
