package daemon

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/nixcache/nixcache/nix/nixhash"
	"github.com/nixcache/nixcache/nix/storepath"
)

// Operation codes of the requests this client sends.
const (
	opIsValidPath           = 1
	opQueryAllValidPaths    = 23
	opQueryPathInfo         = 26
	opQueryPathFromHashPart = 29
	opQueryValidPaths       = 31
	opNarFromPath           = 38
)

// PathInfo is what the daemon knows of a valid store path.
type PathInfo struct {
	StorePath string // absolute
	Deriver   string // absolute path of the .drv; "" if unknown
	// NarHash is the SHA-256 of the path's NAR.
	NarHash nixhash.Hash
	// References are the absolute store paths it refers to, sorted; the
	// path itself is among them when it refers to itself.
	References       []string
	RegistrationTime time.Time // zero if the daemon does not know
	NarSize          uint64
	// Ultimate is set when the path was built locally rather than
	// substituted or imported.
	Ultimate bool
	Sigs     []string // "<key name>:<base64 signature>"
	CA       string   // content address, such as "fixed:r:sha256:..."; "" if input-addressed
}

// checkPath checks that p is a store path of the daemon's store before it
// is sent: a daemon closes the connection on a path it cannot parse.
func (c *Conn) checkPath(p string) error {
	_, err := storepath.Parse(c.storeDir, p)
	return err
}

// request writes an operation and its arguments, and reads the daemon's
// messages up to its answer.
func (c *Conn) request(op uint64, args func()) error {
	c.w.uint64(op)
	if args != nil {
		args()
	}
	if err := c.w.w.Flush(); err != nil {
		return err
	}
	return c.processStderr()
}

// IsValidPath reports whether storePath is valid in the daemon's store.
func (c *Conn) IsValidPath(ctx context.Context, storePath string) (bool, error) {
	what := "is valid path " + clip(storePath)
	if err := c.checkPath(storePath); err != nil {
		return false, fmt.Errorf("%s: %w", what, err)
	}
	var valid bool
	err := c.do(ctx, what, func() error {
		if err := c.request(opIsValidPath, func() { c.w.string(storePath) }); err != nil {
			return err
		}
		var err error
		valid, err = c.r.bool()
		return err
	})
	return valid, err
}

// QueryValidPaths returns those of paths that are valid, sorted. It never
// asks the daemon to substitute the others.
func (c *Conn) QueryValidPaths(ctx context.Context, paths []string) ([]string, error) {
	what := fmt.Sprintf("query valid paths (%d)", len(paths))
	for _, p := range paths {
		if err := c.checkPath(p); err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
	}
	var valid []string
	err := c.do(ctx, what, func() error {
		err := c.request(opQueryValidPaths, func() {
			c.w.strings(paths)
			if c.version >= 1<<8|27 {
				c.w.bool(false) // substitute
			}
		})
		if err != nil {
			return err
		}
		// The daemon answers with a subset of a set: never more.
		valid, err = c.r.strings(min(len(paths), maxPaths), maxString, "valid paths")
		return err
	})
	return valid, err
}

// QueryAllValidPaths returns every valid path of the daemon's store,
// sorted. It costs some 100 bytes per path, on the wire and in memory:
// 100 MB for a store of a million paths.
func (c *Conn) QueryAllValidPaths(ctx context.Context) ([]string, error) {
	var paths []string
	err := c.do(ctx, "query all valid paths", func() error {
		if err := c.request(opQueryAllValidPaths, nil); err != nil {
			return err
		}
		var err error
		paths, err = c.r.strings(maxPaths, maxString, "valid paths")
		return err
	})
	return paths, err
}

// QueryPathFromHashPart returns the valid store path whose hash part is
// hashPart (the 32 characters that name a .narinfo), or an error wrapping
// ErrNotFound.
func (c *Conn) QueryPathFromHashPart(ctx context.Context, hashPart string) (string, error) {
	what := "query path from hash part " + clip(hashPart)
	if err := storepath.ValidateHashPart(hashPart); err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	return c.queryPathFromHashPart(ctx, what, hashPart)
}

// queryPathFromHashPart sends hashPart unchecked (tests use it to make the
// daemon answer with an error).
func (c *Conn) queryPathFromHashPart(ctx context.Context, what, hashPart string) (string, error) {
	var p string
	err := c.do(ctx, what, func() error {
		if err := c.request(opQueryPathFromHashPart, func() { c.w.string(hashPart) }); err != nil {
			return err
		}
		var err error
		if p, err = c.r.string(maxString, "store path"); err != nil {
			return err
		}
		if p == "" {
			return ErrNotFound
		}
		return nil
	})
	return p, err
}

// QueryPathInfo returns what the daemon knows of storePath, or an error
// wrapping ErrNotFound if it is not valid.
func (c *Conn) QueryPathInfo(ctx context.Context, storePath string) (*PathInfo, error) {
	what := "query path info " + clip(storePath)
	if err := c.checkPath(storePath); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	var info *PathInfo
	err := c.do(ctx, what, func() error {
		if err := c.request(opQueryPathInfo, func() { c.w.string(storePath) }); err != nil {
			return err
		}
		valid, err := c.r.bool() // sent since protocol 1.17
		if err != nil {
			return err
		}
		if !valid {
			return ErrNotFound
		}
		info, err = c.readPathInfo(storePath)
		return err
	})
	if err != nil {
		return nil, err
	}
	return info, nil
}

// readPathInfo reads a path info without its path: deriver, NAR hash
// (untyped hex), references, registration time, NAR size, and, since
// protocol 1.16, ultimate, signatures and content address.
func (c *Conn) readPathInfo(storePath string) (*PathInfo, error) {
	info := &PathInfo{StorePath: storePath}
	var err error
	if info.Deriver, err = c.r.string(maxString, "deriver"); err != nil {
		return nil, err
	}
	narHash, err := c.r.string(maxString, "NAR hash")
	if err != nil {
		return nil, err
	}
	if info.References, err = c.r.strings(maxPaths, maxString, "references"); err != nil {
		return nil, err
	}
	regTime, err := c.r.uint64()
	if err != nil {
		return nil, err
	}
	if info.NarSize, err = c.r.uint64(); err != nil {
		return nil, err
	}
	if info.Ultimate, err = c.r.bool(); err != nil {
		return nil, err
	}
	if info.Sigs, err = c.r.strings(maxSmallList, maxString, "signatures"); err != nil {
		return nil, err
	}
	if info.CA, err = c.r.string(maxString, "content address"); err != nil {
		return nil, err
	}
	if info.NarHash, err = nixhash.ParseAs(nixhash.SHA256, narHash); err != nil {
		return nil, protocolErrorf("NAR hash: %v", err)
	}
	if regTime > 0 && regTime <= 1<<62 {
		info.RegistrationTime = time.Unix(int64(regTime), 0)
	}
	return info, nil
}

// NarFromPath writes the NAR serialisation of storePath to w, as
// nix-store --dump would, streaming: the daemon sends the archive raw,
// and it is copied through while its structure is followed to find its
// end.
//
// The daemon reports a failure to read the path in place of the archive,
// and then closes the connection: the error is a *DaemonError, which also
// wraps ErrNotFound when the path is not valid or not on disk, and nothing
// was written to w. Check the path with QueryPathInfo first, as nix-serve
// does: daemons before Nix 2.33 serve whatever is on disk at that path,
// valid or not. Any other error, including one from w, may come after
// part of the archive was written.
func (c *Conn) NarFromPath(ctx context.Context, storePath string, w io.Writer) error {
	what := "nar from path " + clip(storePath)
	if err := c.checkPath(storePath); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return c.do(ctx, what, func() error {
		if err := c.request(opNarFromPath, func() { c.w.string(storePath) }); err != nil {
			return err
		}
		if c.narOut == nil {
			c.copyBuf = make([]byte, narCopyBufSize)
			c.narOut = bufio.NewWriterSize(w, narWriteBufSize)
		} else {
			c.narOut.Reset(w)
		}
		err := copyNAR(c.r.r, c.narOut, c.copyBuf, c.archiveError)
		c.narOut.Reset(nil) // keep no reference to w
		if isAnswer(err) {
			c.fail(err) // the daemon hangs up after such an error
		}
		return err
	})
}

// archiveError reads the error the daemon sent in place of an archive.
func (c *Conn) archiveError() error {
	err := c.readError()
	if de, ok := err.(*DaemonError); ok && notFoundMessage(de.Message) { //nolint:errorlint // readError returns the daemon's error itself
		return fmt.Errorf("%w: %w", ErrNotFound, de)
	}
	return err
}

// notFoundMessage reports whether a daemon's message says a path is not
// there: "path '...' is not valid" (Nix 2.33 and later), or, from older
// daemons, which read the path from disk unchecked, "getting status of
// '...': No such file or directory".
func notFoundMessage(msg string) bool {
	return strings.Contains(msg, "is not valid") || strings.Contains(msg, "No such file or directory")
}
