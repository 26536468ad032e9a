package server

import (
	"errors"
	"io"
	"testing"
)

// lastRead returns data in one read, together with err.
type lastRead struct {
	data []byte
	err  error
}

func (r *lastRead) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	if len(r.data) == 0 {
		return n, r.err
	}
	return n, nil
}

// TestReadChunk: an error a reader returns with the bytes that fill the
// chunk (a Range's end check) is not lost, as io.ReadFull loses it.
func TestReadChunk(t *testing.T) {
	bad := errors.New("the copy made again differs")
	tests := []struct {
		name    string
		r       io.Reader
		size    int
		wantN   int
		wantErr error
	}{
		{"error with the last bytes", &lastRead{data: []byte("0123456789"), err: bad}, 10, 10, bad},
		{"EOF with the last bytes", &lastRead{data: []byte("0123456789"), err: io.EOF}, 10, 10, nil},
		{"clean", &lastRead{data: []byte("0123456789")}, 10, 10, nil},
		{"short", &lastRead{data: []byte("01234"), err: io.EOF}, 10, 5, io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, err := readChunk(tt.r, make([]byte, tt.size))
			if n != tt.wantN || !errors.Is(err, tt.wantErr) {
				t.Errorf("readChunk: %d, %v; want %d, %v", n, err, tt.wantN, tt.wantErr)
			}
		})
	}
}
