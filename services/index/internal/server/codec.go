package server

import (
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	_ "google.golang.org/grpc/encoding/proto" // registers the "proto" codec uploadCodec falls back to
	"google.golang.org/grpc/mem"

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

// decodeChunk copies the chunk of data, a PutNarRequest holding only a
// chunk, into a buffer of uploadChunks; ok is false when data is anything
// else.
func decodeChunk(data mem.BufferSlice) (chunk []byte, ok bool) {
	return grpcutil.LoneBytesField(data, 2, func(n int) []byte {
		if n > grpcutil.ChunkSize {
			return make([]byte, n) // a client sending larger chunks: not pooled
		}
		return (*uploadChunks.Get().(*[]byte))[:n]
	})
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
