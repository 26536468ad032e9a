package daemon

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nixcache/nixcache/nix/nixhash"
)

// Store paths the fake daemon talks about.
const (
	pathA     = "/nix/store/7rjj86a15146cq1d3qy068lml7n8ykzm-hello-2.12"
	hashPartA = "7rjj86a15146cq1d3qy068lml7n8ykzm"
	pathB     = "/nix/store/ij0f3fwyjqagrxsz3q3pj94m2rwhvya3-glibc-2.37"
	drvA      = "/nix/store/b3rjpnxsgqc3p3x7f4gacl4sfb6vx9ik-hello-2.12.drv"
	narHashA  = "b6a1d5f3e1b8b2c0a0d2e3f4a5b6c7d8e9f0a1b2c3d4e5f60718293a4b5c6d7e" // hex, as the daemon sends it
	sigA      = "cache.example.org-1:dGVzdHNpZw=="
	caA       = "fixed:r:sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s"
)

func v(minor uint8) Version { return ProtocolVersion(1, minor) }

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// replyPathInfoA writes the daemon's answer to QueryPathInfo(pathA).
func replyPathInfoA(f *fake) {
	f.last()
	f.word(1) // valid
	f.str(drvA)
	f.str(narHashA)
	f.strs(pathB, pathA)
	f.word(1700000000)
	f.word(123456)
	f.word(1) // ultimate
	f.strs(sigA)
	f.str(caA)
}

func wantPathInfoA(t *testing.T) *PathInfo {
	h, err := nixhash.ParseAs(nixhash.SHA256, narHashA)
	if err != nil {
		t.Fatal(err)
	}
	return &PathInfo{
		StorePath:        pathA,
		Deriver:          drvA,
		NarHash:          h,
		References:       []string{pathB, pathA},
		RegistrationTime: time.Unix(1700000000, 0),
		NarSize:          123456,
		Ultimate:         true,
		Sigs:             []string{sigA},
		CA:               caA,
	}
}

func TestHandshake(t *testing.T) {
	features := []string{"realisation-with-path-not-hash", "delete-dead-specific-referrers"}
	for _, tc := range []struct {
		client, daemon, want Version
	}{
		{MaxVersion, v(21), v(21)}, // Nix 2.3
		{MaxVersion, v(25), v(25)},
		{MaxVersion, v(26), v(26)},
		{MaxVersion, v(32), v(32)},
		{MaxVersion, v(33), v(33)},
		{MaxVersion, v(34), v(34)}, // Nix 2.8
		{MaxVersion, v(35), v(35)},
		{MaxVersion, v(37), v(37)},
		{MaxVersion, v(38), v(38)},
		{MaxVersion, v(39), v(38)},  // a newer daemon
		{MaxVersion, v(255), v(38)}, // a much newer one
		{v(21), v(38), v(21)},
		{v(34), v(38), v(34)},
		{v(35), v(37), v(35)},
	} {
		t.Run(tc.client.String()+"_to_"+tc.daemon.String(), func(t *testing.T) {
			c, err := dialFake(t, func(f *fake) {
				f.handshake(tc.client, tc.daemon, features, nil)
				// The next word must be the request: the handshake sent
				// no more and no less than the daemon reads.
				f.requestPath(opQueryPathFromHashPart, hashPartA)
				f.last()
				f.str(pathA)
			}, WithProtocolVersion(tc.client))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if c.Version() != tc.want {
				t.Errorf("Version() = %s, want %s", c.Version(), tc.want)
			}
			wantDaemon, wantTrust, wantFeatures := "", TrustUnknown, []string(nil)
			if tc.want >= v(33) {
				wantDaemon = fakeVersion
			}
			if tc.want >= v(35) {
				wantTrust = Trusted
			}
			if tc.want >= v(38) {
				wantFeatures = features
			}
			if c.DaemonVersion() != wantDaemon {
				t.Errorf("DaemonVersion() = %q, want %q", c.DaemonVersion(), wantDaemon)
			}
			if c.Trust() != wantTrust {
				t.Errorf("Trust() = %v, want %v", c.Trust(), wantTrust)
			}
			if !slices.Equal(c.Features(), wantFeatures) {
				t.Errorf("Features() = %q, want %q", c.Features(), wantFeatures)
			}
			p, err := c.QueryPathFromHashPart(testCtx(t), hashPartA)
			if err != nil || p != pathA {
				t.Errorf("QueryPathFromHashPart = %q, %v; want %q", p, err, pathA)
			}
		})
	}
}

func TestHandshakeRefused(t *testing.T) {
	for _, tc := range []struct {
		name     string
		greeting func(*fake)
		want     string
		protocol bool // the error wraps ErrProtocol
	}{
		{"not a daemon", func(f *fake) { f.word(0x0a0d0a0d); f.word(uint64(v(34))) }, "not a Nix daemon", true},
		{"major 2", func(f *fake) { f.word(workerMagic2); f.word(2<<8 | 1) }, "protocol 2.1", true},
		{"huge version", func(f *fake) { f.word(workerMagic2); f.word(1<<40 | 1<<8) }, "protocol", true},
		{"too old", func(f *fake) { f.word(workerMagic2); f.word(uint64(v(20))) }, "older than 1.21 (Nix 2.3)", false},
		{"bad trust flag", func(f *fake) {
			f.word(workerMagic2)
			f.word(uint64(v(35)))
			f.flush()
			f.expect(0, "CPU affinity")
			f.expect(0, "reserveSpace")
			f.str("2.20.0")
			f.word(7)
		}, "trust flag 7", true},
		{"startup error", func(f *fake) {
			f.word(workerMagic2)
			f.word(uint64(v(34)))
			f.flush()
			f.expect(0, "CPU affinity")
			f.expect(0, "reserveSpace")
			f.str("2.8.0")
			writeNewError(f, "user 'nobody' is not allowed to connect to the Nix daemon")
		}, "not allowed to connect", false},
		{"hangs up", func(f *fake) { f.word(workerMagic2) }, "unexpected EOF", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := dialFake(t, func(f *fake) {
				f.expect(workerMagic1, "magic")
				f.expect(uint64(MaxVersion), "client version")
				tc.greeting(f)
			})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("handshake error %v, want one containing %q", err, tc.want)
			}
			if errors.Is(err, ErrProtocol) != tc.protocol {
				t.Errorf("errors.Is(%v, ErrProtocol) = %v, want %v", err, !tc.protocol, tc.protocol)
			}
		})
	}
}

func TestOptionsRefused(t *testing.T) {
	for _, opt := range []Option{
		WithProtocolVersion(v(20)),
		WithProtocolVersion(v(39)),
		WithProtocolVersion(ProtocolVersion(2, 0)),
		WithStoreDir("nix/store"),
		WithStoreDir("/nix/store/"),
	} {
		c, err := Dial(testCtx(t), "/nonexistent/socket", opt)
		if err == nil {
			c.Close()
			t.Errorf("Dial with a bad option: no error")
		} else if strings.Contains(err.Error(), "connect") {
			t.Errorf("Dial with a bad option dialled: %v", err)
		}
		if _, err := NewPool("/nonexistent/socket", 1, opt); err == nil {
			t.Errorf("NewPool with a bad option: no error")
		}
	}
}

// call is a request made to a fake daemon: what the fake must receive and
// how the client makes it.
type call struct {
	name string
	req  func(f *fake, v Version)
	do   func(ctx context.Context, c *Conn) error
}

var (
	callIsValid = call{"IsValidPath",
		func(f *fake, _ Version) { f.requestPath(opIsValidPath, pathA) },
		func(ctx context.Context, c *Conn) error { _, err := c.IsValidPath(ctx, pathA); return err }}
	callPathInfo = call{"QueryPathInfo",
		func(f *fake, _ Version) { f.requestPath(opQueryPathInfo, pathA) },
		func(ctx context.Context, c *Conn) error { _, err := c.QueryPathInfo(ctx, pathA); return err }}
	callAll = call{"QueryAllValidPaths",
		func(f *fake, _ Version) { f.request(opQueryAllValidPaths) },
		func(ctx context.Context, c *Conn) error { _, err := c.QueryAllValidPaths(ctx); return err }}
	callFromHash = call{"QueryPathFromHashPart",
		func(f *fake, _ Version) { f.requestPath(opQueryPathFromHashPart, hashPartA) },
		func(ctx context.Context, c *Conn) error {
			_, err := c.QueryPathFromHashPart(ctx, hashPartA)
			return err
		}}
	callValid = call{"QueryValidPaths",
		func(f *fake, v Version) {
			f.request(opQueryValidPaths)
			f.expect(2, "path count")
			f.expectString(pathA, "path")
			f.expectString(pathB, "path")
			if v >= 1<<8|27 {
				f.expect(0, "substitute flag")
			}
		},
		func(ctx context.Context, c *Conn) error {
			_, err := c.QueryValidPaths(ctx, []string{pathA, pathB})
			return err
		}}
)

func TestRequests(t *testing.T) {
	for _, ver := range []Version{v(21), v(26), v(27), v(34), v(38)} {
		t.Run(ver.String(), func(t *testing.T) {
			c := pipeConn(t, ver, func(f *fake) {
				callIsValid.req(f, ver)
				f.last()
				f.word(1)
				callValid.req(f, ver)
				f.last()
				f.strs(pathA)
				callAll.req(f, ver)
				f.last()
				f.strs(pathB, pathA)
				callFromHash.req(f, ver)
				f.last()
				f.str(pathA)
				f.requestPath(opQueryPathFromHashPart, "00000000000000000000000000000000")
				f.last()
				f.str("")
				callPathInfo.req(f, ver)
				replyPathInfoA(f)
				f.requestPath(opQueryPathInfo, pathB)
				f.last()
				f.word(0) // not valid
				f.requestPath(opIsValidPath, pathB)
				f.last()
				f.word(0)
			})
			defer c.Close()
			ctx := testCtx(t)

			if ok, err := c.IsValidPath(ctx, pathA); !ok || err != nil {
				t.Errorf("IsValidPath = %v, %v; want true", ok, err)
			}
			if got, err := c.QueryValidPaths(ctx, []string{pathA, pathB}); err != nil || !slices.Equal(got, []string{pathA}) {
				t.Errorf("QueryValidPaths = %q, %v", got, err)
			}
			if got, err := c.QueryAllValidPaths(ctx); err != nil || !slices.Equal(got, []string{pathB, pathA}) {
				t.Errorf("QueryAllValidPaths = %q, %v", got, err)
			}
			if got, err := c.QueryPathFromHashPart(ctx, hashPartA); err != nil || got != pathA {
				t.Errorf("QueryPathFromHashPart = %q, %v", got, err)
			}
			if got, err := c.QueryPathFromHashPart(ctx, "00000000000000000000000000000000"); !errors.Is(err, ErrNotFound) || got != "" {
				t.Errorf("QueryPathFromHashPart(unknown) = %q, %v; want ErrNotFound", got, err)
			}
			info, err := c.QueryPathInfo(ctx, pathA)
			if err != nil {
				t.Fatal(err)
			}
			if want := wantPathInfoA(t); !reflect.DeepEqual(info, want) {
				t.Errorf("QueryPathInfo =\n%+v\nwant\n%+v", info, want)
			}
			if info, err := c.QueryPathInfo(ctx, pathB); !errors.Is(err, ErrNotFound) || info != nil {
				t.Errorf("QueryPathInfo(invalid) = %v, %v; want nil, ErrNotFound", info, err)
			}
			if ok, err := c.IsValidPath(ctx, pathB); ok || err != nil {
				t.Errorf("IsValidPath(invalid) = %v, %v; want false", ok, err)
			}
		})
	}
}

// TestArgumentsChecked: arguments the daemon would choke on (it hangs up
// on a path it cannot parse) are refused before anything is sent, and the
// connection stays usable.
func TestArgumentsChecked(t *testing.T) {
	c := pipeConn(t, v(34), func(f *fake) {
		callIsValid.req(f, v(34))
		f.last()
		f.word(1)
	})
	defer c.Close()
	ctx := testCtx(t)
	bad := []string{"", "/nix/store", "/nix/store/tooshort", "/gnu/store/7rjj86a15146cq1d3qy068lml7n8ykzm-hello", pathA + "/bin/hello", "/nix/store/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-hello"}
	for _, p := range bad {
		if _, err := c.IsValidPath(ctx, p); err == nil {
			t.Errorf("IsValidPath(%q): no error", p)
		}
		if _, err := c.QueryPathInfo(ctx, p); err == nil {
			t.Errorf("QueryPathInfo(%q): no error", p)
		}
		if err := c.NarFromPath(ctx, p, io.Discard); err == nil {
			t.Errorf("NarFromPath(%q): no error", p)
		}
		if _, err := c.QueryValidPaths(ctx, []string{pathA, p}); err == nil {
			t.Errorf("QueryValidPaths(%q): no error", p)
		}
	}
	for _, h := range []string{"", "7rjj86a15146cq1d3qy068lml7n8ykz", "7rjj86a15146cq1d3qy068lml7n8ykze"} {
		if _, err := c.QueryPathFromHashPart(ctx, h); err == nil || errors.Is(err, ErrNotFound) {
			t.Errorf("QueryPathFromHashPart(%q) = %v, want an argument error", h, err)
		}
	}
	if ok, err := c.IsValidPath(ctx, pathA); !ok || err != nil {
		t.Errorf("IsValidPath after refused arguments = %v, %v", ok, err)
	}
}

func TestStoreDir(t *testing.T) {
	const gnuPath = "/gnu/store/7rjj86a15146cq1d3qy068lml7n8ykzm-hello-2.12"
	c, err := dialFake(t, func(f *fake) {
		f.handshake(MaxVersion, MaxVersion, nil, nil)
		f.requestPath(opIsValidPath, gnuPath)
		f.last()
		f.word(1)
	}, WithStoreDir("/gnu/store"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.IsValidPath(testCtx(t), pathA); err == nil {
		t.Errorf("IsValidPath(%s) in /gnu/store: no error", pathA)
	}
	if ok, err := c.IsValidPath(testCtx(t), gnuPath); !ok || err != nil {
		t.Errorf("IsValidPath(%s) = %v, %v", gnuPath, ok, err)
	}
}

// writeNewError writes an error as daemons since protocol 1.26 do.
func writeNewError(f *fake, msg string, traces ...string) {
	f.word(stderrError)
	f.str("Error")
	f.word(0) // level: error
	f.str("Error")
	f.str(msg)
	f.word(0) // no position
	f.word(uint64(len(traces)))
	for _, tr := range traces {
		f.word(0)
		f.str(tr)
	}
}

func TestDaemonError(t *testing.T) {
	for _, tc := range []struct {
		name  string
		ver   Version
		reply func(*fake)
		want  DaemonError
	}{
		{"old format", v(25), func(f *fake) {
			f.word(stderrError)
			f.str("error: path '\x1b[35;1m" + pathA + "\x1b[0m' is not in the Nix store")
			f.word(1)
		}, DaemonError{Message: "error: path '" + pathA + "' is not in the Nix store", Status: 1}},
		{"new format", v(26), func(f *fake) { writeNewError(f, "invalid hash part") }, DaemonError{Message: "invalid hash part"}},
		{"new format with traces", v(38), func(f *fake) {
			f.word(stderrError)
			f.str("Error")
			f.word(3)
			f.str("SQLiteBusy")
			f.str("database is \x1b[1mbusy\x1b[0m")
			f.word(0)
			f.word(2)
			f.word(0)
			f.str("while querying '\x1b[35;1mx\x1b[0m'")
			f.word(0)
			f.str("while serving")
		}, DaemonError{Message: "database is busy", Level: 3, Traces: []string{"while querying 'x'", "while serving"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := pipeConn(t, tc.ver, func(f *fake) {
				f.requestPath(opQueryPathFromHashPart, hashPartA)
				f.word(stderrNext)
				f.str("a log line first")
				tc.reply(f)
				// The connection goes on.
				callIsValid.req(f, tc.ver)
				f.last()
				f.word(1)
			})
			defer c.Close()
			_, err := c.QueryPathFromHashPart(testCtx(t), hashPartA)
			var de *DaemonError
			if !errors.As(err, &de) {
				t.Fatalf("error %v (%T), want a *DaemonError", err, err)
			}
			if !reflect.DeepEqual(*de, tc.want) {
				t.Errorf("DaemonError = %#v, want %#v", *de, tc.want)
			}
			if errors.Is(err, ErrNotFound) || errors.Is(err, ErrProtocol) {
				t.Errorf("error %v wraps ErrNotFound or ErrProtocol", err)
			}
			if ok, err := c.IsValidPath(testCtx(t), pathA); !ok || err != nil {
				t.Errorf("IsValidPath after a daemon error = %v, %v; want true", ok, err)
			}
		})
	}
}

func TestLogMessagesIgnored(t *testing.T) {
	c := pipeConn(t, v(34), func(f *fake) {
		callIsValid.req(f, v(34))
		f.word(stderrNext)
		f.str("querying...\n")
		f.word(stderrStartActivity)
		f.word(7)   // id
		f.word(3)   // level
		f.word(105) // type: build
		f.str("building '/nix/store/x.drv'")
		f.word(2) // fields
		f.word(0)
		f.word(42)
		f.word(1)
		f.str("a string field")
		f.word(0) // parent
		f.word(stderrResult)
		f.word(7)
		f.word(101) // build log line
		f.word(1)
		f.word(1)
		f.str("make: Nothing to be done")
		f.word(stderrStopActivity)
		f.word(7)
		f.last()
		f.word(1)
	})
	defer c.Close()
	if ok, err := c.IsValidPath(testCtx(t), pathA); !ok || err != nil {
		t.Errorf("IsValidPath = %v, %v; want true", ok, err)
	}
}

// TestHostileReplies: oversize strings and lists, and malformed messages,
// are refused before anything is allocated for them, and close the
// connection.
func TestHostileReplies(t *testing.T) {
	const huge = 1 << 50
	for _, tc := range []struct {
		name  string
		call  call
		reply func(*fake)
	}{
		{"huge log line", callIsValid, func(f *fake) { f.word(stderrNext); f.word(huge) }},
		{"log line over 1 MiB", callIsValid, func(f *fake) { f.word(stderrNext); f.word(maxMessage + 1) }},
		{"huge activity text", callIsValid, func(f *fake) {
			f.word(stderrStartActivity)
			f.word(1)
			f.word(0)
			f.word(0)
			f.word(huge)
		}},
		{"huge field count", callIsValid, func(f *fake) { f.word(stderrResult); f.word(1); f.word(0); f.word(huge) }},
		{"unknown field type", callIsValid, func(f *fake) { f.word(stderrResult); f.word(1); f.word(0); f.word(1); f.word(9) }},
		{"unknown message", callIsValid, func(f *fake) { f.word(0x1234) }},
		{"data request", callIsValid, func(f *fake) { f.word(stderrRead); f.word(4096) }},
		{"huge error message", callIsValid, func(f *fake) {
			f.word(stderrError)
			f.str("Error")
			f.word(0)
			f.str("Error")
			f.word(maxMessage + 1)
		}},
		{"error of another type", callIsValid, func(f *fake) { f.word(stderrError); f.str("Exception") }},
		{"error with a position", callIsValid, func(f *fake) {
			f.word(stderrError)
			f.str("Error")
			f.word(0)
			f.str("Error")
			f.str("msg")
			f.word(1)
		}},
		{"huge trace count", callIsValid, func(f *fake) {
			f.word(stderrError)
			f.str("Error")
			f.word(0)
			f.str("Error")
			f.str("msg")
			f.word(0)
			f.word(huge)
		}},
		{"huge path", callFromHash, func(f *fake) { f.last(); f.word(huge) }},
		{"path over 64 KiB", callFromHash, func(f *fake) { f.last(); f.word(maxString + 1) }},
		{"non-zero padding", callFromHash, func(f *fake) { f.last(); f.word(3); f.raw([]byte("abc\x00\x00\x01\x00\x00")) }},
		{"huge path list", callAll, func(f *fake) { f.last(); f.word(huge) }},
		{"path list over 10 million", callAll, func(f *fake) { f.last(); f.word(maxPaths + 1) }},
		{"more valid paths than asked", callValid, func(f *fake) { f.last(); f.strs(pathA, pathB, drvA) }},
		{"huge reference list", callPathInfo, func(f *fake) { f.last(); f.word(1); f.str(""); f.str(narHashA); f.word(huge) }},
		{"huge signature list", callPathInfo, func(f *fake) {
			f.last()
			f.word(1)
			f.str("")
			f.str(narHashA)
			f.strs()
			f.word(0)
			f.word(0)
			f.word(0)
			f.word(maxSmallList + 1)
		}},
		{"bad NAR hash", callPathInfo, func(f *fake) {
			f.last()
			f.word(1)
			f.str("")
			f.str("not a hash")
			f.strs()
			f.word(0)
			f.word(0)
			f.word(0)
			f.strs()
			f.str("")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := pipeConn(t, v(34), func(f *fake) {
				tc.call.req(f, v(34))
				tc.reply(f)
			})
			defer c.Close()
			err := tc.call.do(testCtx(t), c)
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("%s: error %v, want ErrProtocol", tc.call.name, err)
			}
			if err := tc.call.do(testCtx(t), c); !errors.Is(err, ErrClosed) {
				t.Errorf("%s after a protocol error: %v, want ErrClosed", tc.call.name, err)
			}
		})
	}
}

// encode returns what write does to a writer.
func encode(write func(w *writer)) []byte {
	var buf bytes.Buffer
	w := writer{w: bufio.NewWriter(&buf)}
	write(&w)
	w.w.Flush()
	return buf.Bytes()
}

// TestTruncatedReplies: a reply cut anywhere is io.ErrUnexpectedEOF and
// closes the connection.
func TestTruncatedReplies(t *testing.T) {
	for _, tc := range []struct {
		call  call
		reply func(*fake)
	}{
		{callPathInfo, replyPathInfoA},
		{callAll, func(f *fake) { f.last(); f.strs(pathA, pathB) }},
		{callIsValid, func(f *fake) {
			f.word(stderrStartActivity)
			f.word(1)
			f.word(0)
			f.word(0)
			f.str("text")
			f.word(1)
			f.word(1)
			f.str("field")
			f.word(0)
			f.last()
			f.word(1)
		}},
		{callFromHash, func(f *fake) { writeNewError(f, "oops", "trace") }},
	} {
		t.Run(tc.call.name, func(t *testing.T) {
			// The full reply, as bytes.
			var full []byte
			{
				var buf bytes.Buffer
				f := &fake{w: writer{w: bufio.NewWriter(&buf)}}
				tc.reply(f)
				f.w.w.Flush()
				full = buf.Bytes()
			}
			for cut := range len(full) {
				c := pipeConn(t, v(34), func(f *fake) {
					tc.call.req(f, v(34))
					f.raw(full[:cut])
				})
				err := tc.call.do(testCtx(t), c)
				if !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatalf("reply cut after %d of %d bytes: error %v, want io.ErrUnexpectedEOF", cut, len(full), err)
				}
				if c.usable() {
					t.Fatalf("reply cut after %d bytes: connection still usable", cut)
				}
				c.Close()
			}
		})
	}
}

func TestContext(t *testing.T) {
	t.Run("done before", func(t *testing.T) {
		c := pipeConn(t, v(34), func(f *fake) {
			callIsValid.req(f, v(34))
			f.last()
			f.word(1)
		})
		defer c.Close()
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := c.IsValidPath(ctx, pathA); !errors.Is(err, context.Canceled) {
			t.Errorf("IsValidPath with a cancelled ctx: %v, want context.Canceled", err)
		}
		if ok, err := c.IsValidPath(testCtx(t), pathA); !ok || err != nil {
			t.Errorf("IsValidPath after = %v, %v; want true (the connection was not used)", ok, err)
		}
	})
	t.Run("cancelled during", func(t *testing.T) {
		received := make(chan struct{})
		c := pipeConn(t, v(34), func(f *fake) {
			callPathInfo.req(f, v(34))
			f.word(stderrNext)
			f.str("thinking...")
			f.flush()
			close(received)
			f.expectHangUp()
		})
		defer c.Close()
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			<-received
			cancel()
		}()
		start := time.Now()
		_, err := c.QueryPathInfo(ctx, pathA)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("QueryPathInfo cancelled: %v, want context.Canceled", err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("cancellation took %v", d)
		}
		if _, err := c.IsValidPath(testCtx(t), pathA); !errors.Is(err, ErrClosed) {
			t.Errorf("IsValidPath after a cancelled call: %v, want ErrClosed", err)
		}
	})
	t.Run("deadline", func(t *testing.T) {
		c := pipeConn(t, v(34), func(f *fake) {
			callAll.req(f, v(34))
			f.expectHangUp()
		})
		defer c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		_, err := c.QueryAllValidPaths(ctx)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("QueryAllValidPaths past its deadline: %v, want context.DeadlineExceeded", err)
		}
		if c.usable() {
			t.Error("connection still usable after its deadline cut a reply")
		}
	})
}

// expectHangUp waits for the client to close the connection.
func (f *fake) expectHangUp() {
	f.flush()
	if n, err := f.r.uint64(); err == nil {
		f.failf("client sent %#x, want it to hang up", n)
	}
}

func TestCloseTwice(t *testing.T) {
	c := pipeConn(t, v(34), func(f *fake) {})
	if err := c.Close(); err != nil {
		t.Error(err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := c.IsValidPath(testCtx(t), pathA); !errors.Is(err, ErrClosed) {
		t.Errorf("IsValidPath after Close: %v, want ErrClosed", err)
	}
}
