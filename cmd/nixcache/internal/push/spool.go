package push

import (
	"bytes"
	"fmt"
	"io"
	"os"
)

// memLimit is how much of a compressed NAR is kept in memory before it
// goes to a temporary file.
const memLimit = 8 << 20

// fileBuffer holds a compressed NAR between compression and upload (its
// hash names its URL, so it must be complete before the upload starts):
// in memory while small, then in a temporary file.
type fileBuffer struct {
	dir  string
	mem  bytes.Buffer
	file *os.File
	size int64
}

func (b *fileBuffer) Write(p []byte) (int, error) {
	b.size += int64(len(p))
	if b.file == nil && b.mem.Len()+len(p) <= memLimit {
		return b.mem.Write(p)
	}
	if b.file == nil {
		f, err := os.CreateTemp(b.dir, "nixcache-push-*.nar")
		if err != nil {
			return 0, fmt.Errorf("spool compressed NAR: %w", err)
		}
		// Unlinked at once: nothing is left behind, whatever happens.
		os.Remove(f.Name())
		b.file = f
		if _, err := f.Write(b.mem.Bytes()); err != nil {
			return 0, fmt.Errorf("spool compressed NAR: %w", err)
		}
		b.mem = bytes.Buffer{}
	}
	n, err := b.file.Write(p)
	if err != nil {
		return n, fmt.Errorf("spool compressed NAR: %w", err)
	}
	return n, nil
}

// reader returns a reader of everything written, from the start.
func (b *fileBuffer) reader() io.ReadCloser {
	if b.file == nil {
		return io.NopCloser(bytes.NewReader(b.mem.Bytes()))
	}
	return io.NopCloser(io.NewSectionReader(b.file, 0, b.size))
}

// Close releases the buffer.
func (b *fileBuffer) Close() error {
	b.mem = bytes.Buffer{}
	if b.file != nil {
		return b.file.Close()
	}
	return nil
}
