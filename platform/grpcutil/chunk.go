package grpcutil

import (
	"encoding/binary"
	"io"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
)

// LoneBytesField decodes data, an encoded protobuf message, when it holds
// nothing but field num of wire type bytes (a NAR stream's data chunk): it
// copies the field's n bytes, straight from gRPC's frame buffers, into
// buf(n), which must have length n, and returns that. ok is false for any
// other message, which the protobuf codec is left to decode. The codecs of
// NAR streams use it to skip the protobuf codec's own buffers: it gathers
// each message into a cleared 1 MiB buffer of gRPC's pool, then copies the
// chunk into a fresh slice.
func LoneBytesField(data mem.BufferSlice, num protowire.Number, buf func(n int) []byte) (b []byte, ok bool) {
	r := data.Reader() // takes its own references, freed as it reads
	defer r.Close()
	tag, err := binary.ReadUvarint(r)
	if err != nil || tag != protowire.EncodeTag(num, protowire.BytesType) {
		return nil, false
	}
	n, err := binary.ReadUvarint(r)
	if err != nil || n != uint64(r.Remaining()) {
		return nil, false
	}
	b = buf(int(n))
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, false
	}
	return b, true
}
