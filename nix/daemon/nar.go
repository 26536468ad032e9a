package daemon

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"strings"
)

// After answering wopNarFromPath, the daemon sends the archive raw: nothing
// gives its length, so its end is found by following its structure.
//
//	archive  = str("nix-archive-1") node
//	node     = str("(") str("type") (regular | symlink | directory) str(")")
//	regular  = str("regular") [str("executable") str("")] str("contents") contents
//	symlink  = str("symlink") str("target") str(target)
//	directory= str("directory") { str("entry") str("(") str("name") str(name) str("node") node str(")") }
//
// where str is a protocol string and contents a string of any length,
// which is streamed rather than read whole.

const (
	// narCopyBufSize is the chunk in which file contents are copied.
	narCopyBufSize = 256 << 10
	// narWriteBufSize is the buffer that gathers the small tokens
	// between file contents into fewer writes.
	narWriteBufSize = 32 << 10
	// maxNARDepth bounds directory nesting (Linux paths are at most 4096
	// bytes, so at most 2048 levels deep).
	maxNARDepth = 2048
	narMagic    = "nix-archive-1"
)

// narCopier copies one archive from r to w, byte for byte.
type narCopier struct {
	r       *bufio.Reader
	w       *bufio.Writer
	buf     []byte // at least maxString+8 bytes
	n       int64  // bytes copied
	onError func() error
}

// copyNAR copies the archive at the head of r to w and stops at its last
// byte.
//
// A daemon that fails to read the path sends an error where the next
// token was due, and hangs up: then onError reads the error and its result
// is returned. The archive's magic is held back until the root node
// begins, so that nothing is written when the path is missing: daemons
// before Nix 2.33 send the magic before they look at the path.
func copyNAR(r *bufio.Reader, w *bufio.Writer, buf []byte, onError func() error) error {
	c := narCopier{r: r, w: w, buf: buf, onError: onError}
	raw, magic, err := c.readToken(len(narMagic), "archive magic")
	if err != nil {
		return err
	}
	if string(magic) != narMagic {
		return c.errorf("archive magic is %q, want %q", magic, narMagic)
	}
	if next, err := c.peekWord(); err != nil {
		return err
	} else if next == stderrError {
		c.r.Discard(8)
		return c.onError()
	}
	if err := c.put(raw); err != nil {
		return err
	}
	if err := c.node(0); err != nil {
		return err
	}
	if err := c.w.Flush(); err != nil {
		return fmt.Errorf("write NAR: %w", err)
	}
	return nil
}

func (c *narCopier) errorf(format string, args ...any) error {
	return protocolErrorf("NAR at byte %d: %s", c.n, fmt.Sprintf(format, args...))
}

func (c *narCopier) put(b []byte) error {
	if _, err := c.w.Write(b); err != nil {
		return fmt.Errorf("write NAR: %w", err)
	}
	c.n += int64(len(b))
	return nil
}

func (c *narCopier) peekWord() (uint64, error) {
	b, err := c.r.Peek(8)
	if err != nil {
		return 0, unexpectedEOF(err)
	}
	return binary.LittleEndian.Uint64(b), nil
}

// word copies one word and returns it.
func (c *narCopier) word() (uint64, error) {
	b := c.buf[:8]
	if _, err := io.ReadFull(c.r, b); err != nil {
		return 0, unexpectedEOF(err)
	}
	if err := c.put(b); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(b), nil
}

// readToken reads a string of at most max bytes without copying it, and
// returns it raw (length, bytes, padding) and its bytes; both are valid
// until the next read. In place of a token, the daemon may have sent an
// error.
func (c *narCopier) readToken(max int, what string) (raw, tok []byte, err error) {
	n, err := c.peekWord()
	if err != nil {
		return nil, nil, err
	}
	if n == stderrError {
		c.r.Discard(8)
		return nil, nil, c.onError()
	}
	if n > uint64(max) {
		return nil, nil, c.errorf("%s is %d bytes, more than the limit of %d", what, n, max)
	}
	raw = c.buf[:8+int(n)+padLen(n)]
	if _, err := io.ReadFull(c.r, raw); err != nil {
		return nil, nil, unexpectedEOF(err)
	}
	for _, x := range raw[8+n:] {
		if x != 0 {
			return nil, nil, c.errorf("non-zero padding after %s", what)
		}
	}
	return raw, raw[8 : 8+n], nil
}

// token copies a string of at most max bytes and returns it; the slice is
// valid until the next read.
func (c *narCopier) token(max int, what string) ([]byte, error) {
	raw, tok, err := c.readToken(max, what)
	if err != nil {
		return nil, err
	}
	return tok, c.put(raw)
}

// expect copies a token that must be want.
func (c *narCopier) expect(want, what string) error {
	got, err := c.token(max(len(want), 64), what)
	if err != nil {
		return err
	}
	if string(got) != want {
		return c.errorf("%s is %q, want %q", what, got, want)
	}
	return nil
}

func (c *narCopier) node(depth int) error {
	if depth > maxNARDepth {
		return c.errorf("directories nested more than %d deep", maxNARDepth)
	}
	if err := c.expect("(", "node start"); err != nil {
		return err
	}
	if err := c.expect("type", "node type tag"); err != nil {
		return err
	}
	typ, err := c.token(64, "node type")
	if err != nil {
		return err
	}
	switch string(typ) {
	case "regular":
		tag, err := c.token(64, "regular file tag")
		if err != nil {
			return err
		}
		if string(tag) == "executable" {
			if err := c.expect("", "executable flag"); err != nil {
				return err
			}
			if tag, err = c.token(64, "regular file tag"); err != nil {
				return err
			}
		}
		if string(tag) != "contents" {
			return c.errorf("regular file tag is %q, want \"contents\"", tag)
		}
		if err := c.contents(); err != nil {
			return err
		}
	case "symlink":
		if err := c.expect("target", "symlink tag"); err != nil {
			return err
		}
		target, err := c.token(maxString, "symlink target")
		if err != nil {
			return err
		}
		if len(target) == 0 {
			return c.errorf("empty symlink target")
		}
	case "directory":
		return c.directory(depth)
	default:
		return c.errorf("node type %q", typ)
	}
	return c.expect(")", "node end")
}

// contents copies a file's size, contents and padding, streaming.
func (c *narCopier) contents() error {
	size, err := c.word()
	if err != nil {
		return err
	}
	for left := size; left > 0; {
		chunk := c.buf[:min(left, uint64(len(c.buf)))]
		n, err := io.ReadFull(c.r, chunk)
		if err != nil {
			return unexpectedEOF(err)
		}
		if err := c.put(chunk[:n]); err != nil {
			return err
		}
		left -= uint64(n)
	}
	pad := c.buf[:padLen(size)]
	if _, err := io.ReadFull(c.r, pad); err != nil {
		return unexpectedEOF(err)
	}
	for _, x := range pad {
		if x != 0 {
			return c.errorf("non-zero padding after file contents")
		}
	}
	return c.put(pad)
}

// directory copies the entries of a directory and its closing ")".
func (c *narCopier) directory(depth int) error {
	var prev string
	for first := true; ; first = false {
		tok, err := c.token(64, "directory entry tag")
		if err != nil {
			return err
		}
		switch string(tok) {
		case ")":
			return nil
		case "entry":
		default:
			return c.errorf("directory entry tag is %q, want \"entry\" or \")\"", tok)
		}
		if err := c.expect("(", "entry start"); err != nil {
			return err
		}
		if err := c.expect("name", "entry name tag"); err != nil {
			return err
		}
		b, err := c.token(maxString, "entry name")
		if err != nil {
			return err
		}
		name := string(b)
		if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
			return c.errorf("invalid entry name %q", clip(name))
		}
		if !first && name <= prev {
			return c.errorf("entry %q after %q: entries not sorted", clip(name), clip(prev))
		}
		prev = name
		if err := c.expect("node", "entry node tag"); err != nil {
			return err
		}
		if err := c.node(depth + 1); err != nil {
			return err
		}
		if err := c.expect(")", "entry end"); err != nil {
			return err
		}
	}
}
