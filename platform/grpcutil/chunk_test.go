package grpcutil

import (
	"bytes"
	"testing"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
)

// split cuts b into pieces of at most n bytes, as gRPC hands a message
// over in the buffers of its HTTP/2 frames.
func split(b []byte, n int) mem.BufferSlice {
	var s mem.BufferSlice
	for len(b) > 0 {
		k := min(n, len(b))
		s = append(s, mem.SliceBuffer(bytes.Clone(b[:k])))
		b = b[k:]
	}
	return s
}

func TestLoneBytesField(t *testing.T) {
	data := bytes.Repeat([]byte("nixcache"), 40000)
	field := func(num protowire.Number, b []byte) []byte {
		return protowire.AppendBytes(protowire.AppendTag(nil, num, protowire.BytesType), b)
	}
	var into []byte
	buf := func(n int) []byte {
		into = make([]byte, n)
		return into
	}
	for _, frame := range []int{3, 16384, 1 << 20} {
		got, ok := LoneBytesField(split(field(2, data), frame), 2, buf)
		if !ok || !bytes.Equal(got, data) || &got[0] != &into[0] {
			t.Errorf("frames of %d bytes: ok %v, %d bytes, equal %v; want the field, in buf's slice", frame, ok, len(got), bytes.Equal(got, data))
		}
	}
	if got, ok := LoneBytesField(split(field(2, nil), 10), 2, buf); !ok || len(got) != 0 {
		t.Errorf("empty field: %v, %v", got, ok)
	}
	others := map[string][]byte{
		"another field":            field(1, data),
		"another wire type":        protowire.AppendVarint(protowire.AppendTag(nil, 2, protowire.VarintType), 7),
		"a second field after it":  protowire.AppendVarint(protowire.AppendTag(field(2, data), 99, protowire.VarintType), 7),
		"cut short":                field(2, data)[:1000],
		"no message":               nil,
		"a length past the varint": {byte(protowire.EncodeTag(2, protowire.BytesType)), 0xff},
	}
	for name, msg := range others {
		if _, ok := LoneBytesField(split(msg, 16384), 2, buf); ok {
			t.Errorf("%s: decoded as a lone field", name)
		}
	}
}
