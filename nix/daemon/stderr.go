package daemon

import (
	"fmt"
	"regexp"
	"strings"
)

// Before it answers a request, the daemon sends a stream of messages that
// ends with stderrLast, or with stderrError in place of the answer.
const (
	stderrNext          = 0x6f6c6d67 // a log line
	stderrRead          = 0x64617461 // the daemon wants data from us
	stderrWrite         = 0x64617416 // data for us to write somewhere
	stderrLast          = 0x616c7473 // the answer follows
	stderrError         = 0x63787470 // the request failed; an error follows
	stderrStartActivity = 0x53545254
	stderrStopActivity  = 0x53544f50
	stderrResult        = 0x52534c54
)

// DaemonError is a request the daemon answered with an error, such as
// "path '/nix/store/...' is not valid". The connection remains usable
// unless the error came in place of a NAR (see NarFromPath).
type DaemonError struct {
	// Message is the daemon's message, terminal colour codes removed.
	Message string
	// Status is the exit status the daemon suggested (protocols before
	// 1.26); 0 otherwise.
	Status uint64
	// Level is Nix's verbosity level of the error (protocols 1.26 and
	// later); 0 (error) otherwise.
	Level uint64
	// Traces are the error's trace lines, innermost last (1.26 and later).
	Traces []string
}

func (e *DaemonError) Error() string {
	if len(e.Traces) == 0 {
		return "nix daemon: " + e.Message
	}
	return "nix daemon: " + e.Message + " (" + strings.Join(e.Traces, "; ") + ")"
}

// ansiEscape matches the terminal colour codes Nix puts in messages.
var ansiEscape = regexp.MustCompile("\x1b\\[[0-9;]*[A-Za-z]")

func stripANSI(s string) string {
	if !strings.Contains(s, "\x1b") {
		return s
	}
	return ansiEscape.ReplaceAllString(s, "")
}

// processStderr consumes the daemon's messages up to stderrLast. Log
// lines, activities and results are read and dropped. A stderrError is
// returned as a *DaemonError; every other error means the stream is
// broken.
func (c *Conn) processStderr() error {
	for {
		msg, err := c.r.uint64()
		if err != nil {
			return err
		}
		switch msg {
		case stderrLast:
			return nil
		case stderrError:
			return c.readError()
		case stderrNext:
			if err := c.r.skip(maxMessage, "log line"); err != nil {
				return err
			}
		case stderrStartActivity:
			// id, level, type, text, fields, parent id
			if err := c.skipWords(3); err != nil {
				return err
			}
			if err := c.r.skip(maxMessage, "activity text"); err != nil {
				return err
			}
			if err := c.skipFields(); err != nil {
				return err
			}
			if err := c.skipWords(1); err != nil {
				return err
			}
		case stderrStopActivity:
			if err := c.skipWords(1); err != nil { // id
				return err
			}
		case stderrResult:
			if err := c.skipWords(2); err != nil { // id, type
				return err
			}
			if err := c.skipFields(); err != nil {
				return err
			}
		case stderrRead, stderrWrite:
			return protocolErrorf("daemon asked to exchange data (message %#x) during a query", msg)
		default:
			return protocolErrorf("unknown message type %#x from the daemon", msg)
		}
	}
}

func (c *Conn) skipWords(n int) error {
	for range n {
		if _, err := c.r.uint64(); err != nil {
			return err
		}
	}
	return nil
}

// skipFields reads the typed fields of an activity or result: a count,
// then per field its type, 0 for a number and 1 for a string, and value.
func (c *Conn) skipFields() error {
	n, err := c.r.count(maxSmallList, "log fields")
	if err != nil {
		return err
	}
	for range n {
		typ, err := c.r.uint64()
		if err != nil {
			return err
		}
		switch typ {
		case 0:
			_, err = c.r.uint64()
		case 1:
			err = c.r.skip(maxMessage, "log field")
		default:
			err = protocolErrorf("unknown log field type %d", typ)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// readError reads the error that follows stderrError. Before protocol 1.26
// it is a message and a status; since, Nix's serialised Error: the string
// "Error", level, name (unused), message, a position (always absent), and
// traces, each a position (absent) and a message.
func (c *Conn) readError() error {
	if c.version < 1<<8|26 {
		msg, err := c.r.string(maxMessage, "error message")
		if err != nil {
			return err
		}
		status, err := c.r.uint64()
		if err != nil {
			return err
		}
		return &DaemonError{Message: stripANSI(msg), Status: status}
	}
	typ, err := c.r.string(maxString, "error type")
	if err != nil {
		return err
	}
	if typ != "Error" {
		return protocolErrorf("error of type %q, want \"Error\"", clip(typ))
	}
	level, err := c.r.uint64()
	if err != nil {
		return err
	}
	if err := c.r.skip(maxString, "error name"); err != nil {
		return err
	}
	msg, err := c.r.string(maxMessage, "error message")
	if err != nil {
		return err
	}
	if err := c.noPosition(); err != nil {
		return err
	}
	n, err := c.r.count(maxSmallList, "error traces")
	if err != nil {
		return err
	}
	e := &DaemonError{Message: stripANSI(msg), Level: level}
	for range n {
		if err := c.noPosition(); err != nil {
			return err
		}
		trace, err := c.r.string(maxMessage, "error trace")
		if err != nil {
			return err
		}
		e.Traces = append(e.Traces, stripANSI(trace))
	}
	return e
}

// noPosition reads an error position, which no daemon has ever sent.
func (c *Conn) noPosition() error {
	havePos, err := c.r.uint64()
	if err != nil {
		return err
	}
	if havePos != 0 {
		return protocolErrorf("error with a source position, which this client cannot read")
	}
	return nil
}

// clip shortens s for an error message.
func clip(s string) string {
	const max = 128
	if len(s) > max {
		return fmt.Sprintf("%s...", s[:max])
	}
	return s
}
