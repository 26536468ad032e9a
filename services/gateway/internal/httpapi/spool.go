package httpapi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nixcache/nixcache/platform/diskio"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
)

// A co-located gateway spools a NAR upload instead of streaming it (the
// index's -upload-spool, UploadSpool): the index hands it a descriptor of
// an empty file of its own over a Unix socket, the gateway writes the
// body into it and closes it, and PutNar names the file (spool_id) with
// no chunks. The index verifies the file only once no descriptor open for
// writing is left (services/index/internal/spool). The connection stays
// open until PutNar has answered: the index drops a file nobody claimed
// when its connection ends.

// spooled is one file the index handed out.
type spooled struct {
	conn *net.UnixConn
	file *os.File
	id   string
	// limit is the largest file the index takes (-max-nar-size).
	limit int64
}

// errNoSpool: the socket is not there or nobody serves it (an index
// without -upload-spool, on another host): the upload is streamed.
var errNoSpool = errors.New("no upload spool")

// openSpool asks the index's spool socket at path for a file, within
// ctx. An index that does not answer in time is answered 503, as a
// stream it does not open is (Unavailable): streaming would not fare
// better.
func openSpool(ctx context.Context, path string) (*spooled, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		switch {
		case errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED):
			return nil, errNoSpool
		case ctx.Err() != nil:
			return nil, status.Error(codes.Unavailable, "the index did not take a connection to its upload spool in time (-request-timeout)")
		}
		return nil, fmt.Errorf("upload spool %s: %w", path, err)
	}
	conn := c.(*net.UnixConn)
	deadline, _ := ctx.Deadline()
	_ = conn.SetReadDeadline(deadline)
	sp, err := readSpoolGrant(conn)
	if err != nil {
		conn.Close()
		switch {
		case status.Code(err) == codes.Unavailable:
			return nil, err
		case errors.Is(err, os.ErrDeadlineExceeded):
			return nil, status.Error(codes.Unavailable, "the index did not hand out an upload spool file in time (-request-timeout)")
		}
		return nil, fmt.Errorf("upload spool %s: %w", path, err)
	}
	_ = conn.SetReadDeadline(time.Time{})
	return sp, nil
}

// readSpoolGrant reads the index's one message: "ok <id> <limit>\n" with
// a descriptor, or "busy <reason>\n" or "error <reason>\n" without one.
func readSpoolGrant(conn *net.UnixConn) (_ *spooled, err error) {
	buf := make([]byte, 512)
	oob := make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
	if err != nil {
		return nil, err
	}
	var fds []int
	defer func() {
		if err != nil {
			for _, fd := range fds {
				unix.Close(fd)
			}
		}
	}()
	if oobn > 0 {
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			return nil, fmt.Errorf("control message: %w", err)
		}
		for _, m := range msgs {
			got, err := unix.ParseUnixRights(&m)
			if err != nil {
				return nil, fmt.Errorf("control message: %w", err)
			}
			fds = append(fds, got...)
		}
	}
	line, _, _ := bytes.Cut(buf[:n], []byte("\n"))
	word, rest, _ := bytes.Cut(line, []byte(" "))
	switch string(word) {
	case "busy":
		// Answered as the index's own refusal of a stream: 503.
		return nil, status.Error(codes.Unavailable, string(rest))
	case "error":
		return nil, fmt.Errorf("the index refused: %s", rest)
	}
	fields := bytes.Fields(line)
	if len(fields) != 3 || string(word) != "ok" || len(fds) != 1 {
		return nil, fmt.Errorf("unexpected answer %q with %d descriptors", line, len(fds))
	}
	limit, err := strconv.ParseInt(string(fields[2]), 10, 64)
	if err != nil || limit <= 0 {
		return nil, fmt.Errorf("unexpected size limit in %q", line)
	}
	return &spooled{conn: conn, file: os.NewFile(uintptr(fds[0]), "upload-spool-file"), id: string(fields[1]), limit: limit}, nil
}

// close hangs up, once PutNar has answered; the file is closed already
// unless writing it failed.
func (sp *spooled) close() {
	sp.file.Close()
	sp.conn.Close()
}

// spoolStream is a PutNar stream whose chunks go into the spool file: the
// header (naming the file) is sent, and CloseAndRecv closes the file
// before it ends the call (the index verifies the file once no
// descriptor open for writing is left). The call is in flight for the
// whole upload, as a streamed one is: it holds one of the index's upload
// slots, and a graceful stop waits for it.
type spoolStream struct {
	indexv1.IndexService_PutNarClient
	sp               *spooled
	written, flushed uint64
	// err is the failure writing the file: the call is then abandoned
	// (cancelled), never ended with a file cut short.
	err error
}

func (s *spoolStream) Send(m *indexv1.PutNarRequest) error {
	chunk := m.GetChunk()
	if m.GetHeader() != nil || chunk == nil {
		return s.IndexService_PutNarClient.Send(m)
	}
	if _, err := s.sp.file.Write(chunk); err != nil {
		s.err = fmt.Errorf("write NAR upload to the spool file: %w", err)
		return s.err
	}
	// The disk works while the upload comes in; the index's fsync then
	// finds little left to write.
	if s.written += uint64(len(chunk)); s.written-s.flushed >= diskio.WritebackSize {
		diskio.StartWriteback(s.sp.file, s.flushed, s.written-s.flushed)
		s.flushed = s.written
	}
	return nil
}

func (s *spoolStream) CloseAndRecv() (*indexv1.PutNarResponse, error) {
	if s.err != nil {
		return nil, s.err
	}
	if err := s.sp.file.Close(); err != nil {
		return nil, fmt.Errorf("write NAR upload to the spool file: %w", err)
	}
	return s.IndexService_PutNarClient.CloseAndRecv()
}
