// Package daemon is a client for the Nix daemon's worker protocol, spoken on
// its Unix socket (/nix/var/nix/daemon-socket/socket), so that a binary
// cache can serve the host's own store as nix-serve does: path infos,
// lookups by hash part, the list of valid paths, and NARs.
//
// It speaks the read-only part of the protocol of daemons from Nix 2.3
// (protocol 1.21) to the current one (1.38), negotiating the older of the
// two versions as Nix does. Every length and count the daemon sends is
// bounded before anything is allocated for it.
//
// A Conn is one daemon connection (the daemon forks a process for each) and
// serves one request at a time; a Pool shares a few among goroutines.
package daemon

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/nixcache/nixcache/nix/storepath"
)

// DefaultSocket is where nix-daemon listens on a standard install.
const DefaultSocket = "/nix/var/nix/daemon-socket/socket"

const (
	workerMagic1 = 0x6e697863 // client hello
	workerMagic2 = 0x6478696f // daemon hello
)

// Version is a worker protocol version as on the wire: major<<8 | minor.
type Version uint16

// ProtocolVersion returns the version major.minor.
func ProtocolVersion(major, minor uint8) Version { return Version(major)<<8 | Version(minor) }

const (
	// MinVersion is the oldest protocol this package speaks, Nix 2.3's.
	MinVersion Version = 1<<8 | 21
	// MaxVersion is the newest protocol this package speaks, and the one it
	// advertises unless told otherwise: that of Nix 2.33 and later.
	MaxVersion Version = 1<<8 | 38
)

// Major returns the major version (1 for every Nix to date).
func (v Version) Major() int { return int(v >> 8) }

// Minor returns the minor version.
func (v Version) Minor() int { return int(v & 0xff) }

// String returns "major.minor".
func (v Version) String() string { return fmt.Sprintf("%d.%d", v.Major(), v.Minor()) }

// Trust is whether the daemon trusts this client (nix.conf trusted-users).
type Trust uint8

const (
	// TrustUnknown: the protocol is older than 1.35, which added the flag.
	TrustUnknown Trust = iota
	Trusted
	NotTrusted
)

func (t Trust) String() string {
	switch t {
	case Trusted:
		return "trusted"
	case NotTrusted:
		return "not trusted"
	}
	return "unknown"
}

// ErrNotFound is wrapped by the errors for store paths and hash parts that
// are not valid in the daemon's store.
var ErrNotFound = errors.New("not a valid store path")

// ErrClosed is wrapped by the errors of a Conn that was closed, by Close or
// after an error that left the stream in an unknown state.
var ErrClosed = errors.New("nix daemon connection closed")

// Option configures Dial and NewPool.
type Option func(*options)

type options struct {
	version  Version
	storeDir string
}

// WithProtocolVersion advertises v instead of MaxVersion; the protocol
// spoken is then the older of v and the daemon's. v must be between
// MinVersion and MaxVersion.
func WithProtocolVersion(v Version) Option { return func(o *options) { o.version = v } }

// WithStoreDir sets the daemon's store directory, against which store
// paths are checked before they are sent; the default is /nix/store. (The
// protocol does not tell it, and a daemon closes the connection when it is
// sent a path outside its store.)
func WithStoreDir(dir string) Option { return func(o *options) { o.storeDir = dir } }

func buildOptions(opts []Option) (options, error) {
	o := options{version: MaxVersion, storeDir: storepath.DefaultStoreDir}
	for _, opt := range opts {
		opt(&o)
	}
	if o.version < MinVersion || o.version > MaxVersion {
		return o, fmt.Errorf("protocol version %s is outside the supported %s to %s", o.version, MinVersion, MaxVersion)
	}
	if err := storepath.ValidateStoreDir(o.storeDir); err != nil {
		return o, err
	}
	return o, nil
}

// Conn is a connection to the Nix daemon. It is not safe for concurrent
// use. A method's ctx bounds that call: its deadline becomes the socket's,
// and cancelling it while the call runs closes the connection.
//
// Errors that leave the connection usable are ErrNotFound, *DaemonError
// (except from NarFromPath), invalid arguments, and a ctx that was already
// done; after any other error the Conn is closed and returns ErrClosed.
type Conn struct {
	nc       net.Conn
	r        reader
	w        writer
	storeDir string

	version       Version
	daemonVersion string
	trust         Trust
	features      []string

	// NARs pass through these; allocated on first use.
	copyBuf []byte
	narOut  *bufio.Writer

	err error // why the connection is unusable, once it is
}

// Dial connects to the daemon listening on socketPath (DefaultSocket on a
// standard install) and performs the handshake.
func Dial(ctx context.Context, socketPath string, opts ...Option) (*Conn, error) {
	o, err := buildOptions(opts)
	if err != nil {
		return nil, fmt.Errorf("dial nix daemon %s: %w", socketPath, err)
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", socketPath)
	if err != nil {
		return nil, fmt.Errorf("dial nix daemon: %w", err)
	}
	c, err := newConn(ctx, nc, o)
	if err != nil {
		return nil, fmt.Errorf("nix daemon %s: %w", socketPath, err)
	}
	return c, nil
}

// newConn performs the handshake on nc, which it owns from then on.
func newConn(ctx context.Context, nc net.Conn, o options) (*Conn, error) {
	c := &Conn{
		nc:       nc,
		r:        reader{r: bufio.NewReaderSize(nc, 64<<10)},
		w:        writer{w: bufio.NewWriterSize(nc, 16<<10)},
		storeDir: o.storeDir,
	}
	if err := c.do(ctx, "handshake", func() error { return c.handshake(o.version) }); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// handshake exchanges the greeting: magic numbers and versions, then the
// fields each side sends at the agreed version, then the daemon's startup
// messages.
func (c *Conn) handshake(ours Version) error {
	c.w.uint64(workerMagic1)
	c.w.uint64(uint64(ours))
	if err := c.w.w.Flush(); err != nil {
		return err
	}
	magic, err := c.r.uint64()
	if err != nil {
		return err
	}
	if magic != workerMagic2 {
		return protocolErrorf("greeting %#x is not a Nix daemon's (%#x)", magic, workerMagic2)
	}
	theirs, err := c.r.uint64()
	if err != nil {
		return err
	}
	if theirs>>8 != uint64(MaxVersion.Major()) || theirs > 0xffff {
		return protocolErrorf("daemon speaks protocol %d.%d, not a %d.x this client knows", theirs>>8, theirs&0xff, MaxVersion.Major())
	}
	c.version = min(ours, Version(theirs))
	if c.version < MinVersion {
		return fmt.Errorf("daemon speaks protocol %s, older than %s (Nix 2.3), the oldest this client supports", c.version, MinVersion)
	}

	if c.version >= 1<<8|38 {
		// Both sides list their optional features; we want none.
		c.w.strings(nil)
		if err := c.w.w.Flush(); err != nil {
			return err
		}
		if c.features, err = c.r.strings(maxSmallList, maxString, "daemon features"); err != nil {
			return err
		}
	}
	if c.version >= 1<<8|14 {
		c.w.uint64(0) // no CPU affinity (obsolete)
	}
	if c.version >= 1<<8|11 {
		c.w.bool(false) // reserveSpace (obsolete)
	}
	if err := c.w.w.Flush(); err != nil {
		return err
	}
	if c.version >= 1<<8|33 {
		if c.daemonVersion, err = c.r.string(maxString, "daemon version"); err != nil {
			return err
		}
	}
	if c.version >= 1<<8|35 {
		t, err := c.r.uint64()
		if err != nil {
			return err
		}
		switch t {
		case 0:
			c.trust = TrustUnknown
		case 1:
			c.trust = Trusted
		case 2:
			c.trust = NotTrusted
		default:
			return protocolErrorf("trust flag %d, want 0, 1 or 2", t)
		}
	}
	return c.processStderr()
}

// Version returns the protocol version agreed with the daemon.
func (c *Conn) Version() Version { return c.version }

// DaemonVersion returns the daemon's Nix version, such as "2.24.10"; it is
// "" for protocols before 1.33, which do not send it.
func (c *Conn) DaemonVersion() string { return c.daemonVersion }

// Trust returns whether the daemon trusts this client; TrustUnknown for
// protocols before 1.35.
func (c *Conn) Trust() Trust { return c.trust }

// Features returns the optional protocol features the daemon offered
// (protocol 1.38 and later). This client uses none of them.
func (c *Conn) Features() []string { return c.features }

// Close closes the connection. It is safe to call more than once.
func (c *Conn) Close() error {
	if c.err == nil {
		c.err = ErrClosed
		return c.nc.Close()
	}
	return nil
}

// fail closes the connection because err left its stream in an unknown
// state.
func (c *Conn) fail(err error) {
	if c.err == nil {
		c.err = err
		c.nc.Close()
	}
}

// usable reports whether the connection can serve another request.
func (c *Conn) usable() bool { return c.err == nil }

// longAgo is a deadline in the past, which interrupts blocked I/O.
var longAgo = time.Unix(1, 0)

// do runs one exchange with the daemon under ctx: ctx's deadline is the
// socket's, and ctx's cancellation interrupts the I/O. An error that is
// not the daemon's answer closes the connection.
func (c *Conn) do(ctx context.Context, what string, exchange func() error) error {
	if c.err != nil {
		if c.err == ErrClosed { //nolint:errorlint // Close sets ErrClosed itself; a wrapped one is an earlier failure
			return fmt.Errorf("%s: %w", what, ErrClosed)
		}
		return fmt.Errorf("%s: %w after an earlier error: %v", what, ErrClosed, c.err) //nolint:errorlint // the earlier error is history, only ErrClosed is its class
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	deadline, _ := ctx.Deadline() // the zero time, no deadline, if none
	if err := c.nc.SetDeadline(deadline); err != nil {
		c.fail(err)
		return fmt.Errorf("%s: %w", what, err)
	}
	stop := context.AfterFunc(ctx, func() { _ = c.nc.SetDeadline(longAgo) })
	err := exchange()
	if !stop() {
		// ctx ended during the exchange and the deadline may have cut
		// it anywhere: the connection cannot be trusted any more.
		c.fail(ctx.Err())
		if err != nil {
			err = ctx.Err()
		}
	}
	if err == nil {
		return nil
	}
	if !isAnswer(err) {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			// The socket's deadline is ctx's, and may fire first.
			err = context.DeadlineExceeded
		}
		c.fail(err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// isAnswer reports whether err is the daemon's answer to a request, after
// which the stream is still in step.
func isAnswer(err error) bool {
	var de *DaemonError
	return errors.Is(err, ErrNotFound) || errors.As(err, &de)
}
