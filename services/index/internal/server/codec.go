package server

import (
	"encoding/binary"
	"io"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	_ "google.golang.org/grpc/encoding/proto" // registers the "proto" codec uploadCodec falls back to
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/nixcache/nixcache/platform/grpcutil"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
)

// Codec is the server option that gives the index its codec: the protobuf
// codec, except that PutNar's data chunks are decoded into pooled buffers
// (uploadCodec).
func Codec() grpc.ServerOption {
	return grpc.ForceServerCodecV2(uploadCodec{proto: encoding.GetCodecV2("proto")})
}

// uploadCodec decodes a PutNarRequest holding only a data chunk by copying
// the chunk, once, into a buffer of uploadChunks, which PutNar hands back
// when it has stored the chunk (releaseChunk). The protobuf codec first
// gathers the message into a buffer of gRPC's pool, whose tier above 32
// KiB is 1 MiB and is cleared on every Get, then copies the chunk into a
// fresh slice for the garbage collector: a fifth of the index's CPU in a
// push. Every other message, and anything but a lone chunk field, goes to
// the protobuf codec. The wire format is unchanged: the codec's name is
// "proto".
type uploadCodec struct {
	proto encoding.CodecV2
}

func (c uploadCodec) Name() string { return "proto" }

func (c uploadCodec) Marshal(v any) (mem.BufferSlice, error) { return c.proto.Marshal(v) }

func (c uploadCodec) Unmarshal(data mem.BufferSlice, v any) error {
	if msg, ok := v.(*indexv1.PutNarRequest); ok {
		if chunk, ok := decodeChunk(data); ok {
			msg.Msg = &indexv1.PutNarRequest_Chunk{Chunk: chunk}
			return nil
		}
	}
	return c.proto.Unmarshal(data, v)
}

// chunkTag is the first byte of a PutNarRequest holding a data chunk:
// field 2 (chunk), wire type bytes.
var chunkTag = protowire.EncodeTag(2, protowire.BytesType)

// decodeChunk copies the chunk of data, a PutNarRequest holding only a
// chunk, into a buffer of uploadChunks; ok is false when data is anything
// else.
func decodeChunk(data mem.BufferSlice) (chunk []byte, ok bool) {
	r := data.Reader() // takes its own references, freed as it reads
	defer r.Close()
	tag, err := binary.ReadUvarint(r)
	if err != nil || tag != chunkTag {
		return nil, false
	}
	n, err := binary.ReadUvarint(r)
	if err != nil || n != uint64(r.Remaining()) {
		return nil, false
	}
	var buf []byte
	if n <= grpcutil.ChunkSize {
		buf = (*uploadChunks.Get().(*[]byte))[:n]
	} else {
		buf = make([]byte, n) // a client sending larger chunks: not pooled
	}
	if _, err := io.ReadFull(r, buf); err != nil {
		releaseChunk(buf)
		return nil, false
	}
	return buf, true
}

// uploadChunks holds the buffers uploadCodec decodes chunks into.
var uploadChunks = sync.Pool{New: func() any {
	b := make([]byte, grpcutil.ChunkSize)
	return &b
}}

// releaseChunk hands a chunk PutNar has stored back to uploadChunks.
// Nothing may use it after. A chunk the protobuf codec decoded is taken
// too when it is large enough.
func releaseChunk(chunk []byte) {
	if cap(chunk) >= grpcutil.ChunkSize {
		chunk = chunk[:grpcutil.ChunkSize]
		uploadChunks.Put(&chunk)
	}
}
