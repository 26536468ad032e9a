package httpapi

import (
	"encoding/binary"
	"io"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	_ "google.golang.org/grpc/encoding/proto" // registers the "proto" codec chunkCodec falls back to
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"

	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
)

// chunkTag is the first byte of a GetNarResponse holding a data chunk:
// field 2 (chunk), wire type bytes.
var chunkTag = protowire.EncodeTag(2, protowire.BytesType)

// chunkCodec is the codec of one GetNar stream on the gateway's side. It
// decodes each data chunk into one buffer it reuses, where the protobuf
// codec would allocate (and zero, and later collect) a fresh 256 KiB slice
// per message: on a NAR streamed from the index that was a quarter of the
// gateway's CPU. A chunk from Recv is therefore valid only until the next
// Recv (copyNar writes each before receiving the next). Every other
// message, and anything but a lone chunk field, goes to the protobuf
// codec. The wire format is unchanged: the codec's name is "proto".
type chunkCodec struct {
	proto encoding.CodecV2
	r     mem.Reader
	buf   []byte
}

// narStreamCodec is the call option giving one GetNar call its own
// chunkCodec.
func narStreamCodec() grpc.CallOption {
	return grpc.ForceCodecV2(&chunkCodec{proto: encoding.GetCodecV2("proto")})
}

func (c *chunkCodec) Name() string { return "proto" }

func (c *chunkCodec) Marshal(v any) (mem.BufferSlice, error) { return c.proto.Marshal(v) }

func (c *chunkCodec) Unmarshal(data mem.BufferSlice, v any) error {
	if msg, ok := v.(*indexv1.GetNarResponse); ok {
		if chunk, ok := c.chunk(data); ok {
			msg.Msg = &indexv1.GetNarResponse_Chunk{Chunk: chunk}
			return nil
		}
	}
	return c.proto.Unmarshal(data, v)
}

// chunk copies the chunk of data, a GetNarResponse holding only a chunk,
// into c.buf; ok is false when data is anything else.
func (c *chunkCodec) chunk(data mem.BufferSlice) (chunk []byte, ok bool) {
	c.r.Reset(data) // takes its own references, freed as it reads
	defer c.r.Close()
	tag, err := binary.ReadUvarint(&c.r)
	if err != nil || tag != chunkTag {
		return nil, false
	}
	n, err := binary.ReadUvarint(&c.r)
	if err != nil || n != uint64(c.r.Remaining()) {
		return nil, false
	}
	if uint64(cap(c.buf)) < n {
		c.buf = make([]byte, n)
	}
	c.buf = c.buf[:n]
	if _, err := io.ReadFull(&c.r, c.buf); err != nil {
		return nil, false
	}
	return c.buf, true
}
