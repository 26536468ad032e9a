package httpapi

import (
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	_ "google.golang.org/grpc/encoding/proto" // registers the "proto" codec chunkCodec falls back to
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/nixcache/nixcache/platform/grpcutil"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
)

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
	return grpcutil.LoneBytesField(data, 2, func(n int) []byte {
		if cap(c.buf) < n {
			c.buf = make([]byte, n)
		}
		c.buf = c.buf[:n]
		return c.buf
	})
}

// uploadCodec is the codec of the gateway's PutNar calls. It encodes each
// data chunk straight into a buffer of its pool, which gRPC frees back to
// it once the frames are written. The protobuf codec takes the buffer from
// gRPC's default pool instead, whose tier above 32 KiB is 1 MiB and is
// cleared on every Get: four bytes zeroed per byte uploaded, a fifth of
// the gateway's CPU in a push. Every other message goes to the protobuf
// codec. The wire format is unchanged: the codec's name is "proto".
type uploadCodec struct {
	proto encoding.CodecV2
	pool  mem.BufferPool
}

// narUploadCodec is the call option giving a PutNar call the uploadCodec.
func narUploadCodec() grpc.CallOption {
	return grpc.ForceCodecV2(uploadCodec{proto: encoding.GetCodecV2("proto"), pool: uploadBuffers})
}

func (c uploadCodec) Name() string { return "proto" }

func (c uploadCodec) Unmarshal(data mem.BufferSlice, v any) error { return c.proto.Unmarshal(data, v) }

func (c uploadCodec) Marshal(v any) (mem.BufferSlice, error) {
	msg, ok := v.(*indexv1.PutNarRequest)
	if !ok {
		return c.proto.Marshal(v)
	}
	chunk, ok := msg.GetMsg().(*indexv1.PutNarRequest_Chunk)
	if !ok || len(msg.ProtoReflect().GetUnknown()) > 0 {
		return c.proto.Marshal(v)
	}
	// What proto.Marshal writes for a message holding only the chunk.
	size := protowire.SizeTag(2) + protowire.SizeBytes(len(chunk.Chunk))
	bp := c.pool.Get(size)
	*bp = protowire.AppendBytes(protowire.AppendTag((*bp)[:0], 2, protowire.BytesType), chunk.Chunk)
	return mem.BufferSlice{mem.NewBuffer(bp, c.pool)}, nil
}

// uploadBuffers is the pool of the uploadCodec's buffers.
var uploadBuffers mem.BufferPool = &dirtyPool{}

// dirtyPool is a mem.BufferPool that hands buffers out as they were left:
// the uploadCodec overwrites every byte it uses. Buffers fit a chunk
// message, so that one size serves every Get.
type dirtyPool struct{ pool sync.Pool }

// chunkMessageSize bounds an encoded chunk message: grpcutil.ChunkSize of
// data, its tag and length.
const chunkMessageSize = grpcutil.ChunkSize + 16

func (p *dirtyPool) Get(length int) *[]byte {
	if bp, ok := p.pool.Get().(*[]byte); ok && cap(*bp) >= length {
		*bp = (*bp)[:length]
		return bp
	}
	b := make([]byte, length, max(length, chunkMessageSize))
	return &b
}

func (p *dirtyPool) Put(bp *[]byte) { p.pool.Put(bp) }
