package httpapi

import (
	"bytes"
	"testing"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
)

// whole is b as gRPC hands a message over (LoneBytesField's test cuts it
// into frames).
func whole(b []byte) mem.BufferSlice { return mem.BufferSlice{mem.SliceBuffer(b)} }

func TestChunkCodec(t *testing.T) {
	c := &chunkCodec{proto: encoding.GetCodecV2("proto")}
	marshal := func(m proto.Message) []byte {
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	chunkMsg := func(data []byte) []byte {
		return marshal(&indexv1.GetNarResponse{Msg: &indexv1.GetNarResponse_Chunk{Chunk: data}})
	}
	a, b := pattern("a", 300000), pattern("b", 200000)

	var got indexv1.GetNarResponse
	if err := c.Unmarshal(whole(chunkMsg(a)), &got); err != nil || !bytes.Equal(got.GetChunk(), a) {
		t.Fatalf("first chunk: %v, %d bytes equal %v", err, len(got.GetChunk()), bytes.Equal(got.GetChunk(), a))
	}
	first := &got.GetChunk()[0]
	if err := c.Unmarshal(whole(chunkMsg(b)), &got); err != nil || !bytes.Equal(got.GetChunk(), b) {
		t.Fatalf("second chunk: %v, %d bytes", err, len(got.GetChunk()))
	}
	if &got.GetChunk()[0] != first {
		t.Errorf("the second chunk was decoded into a new buffer, not the codec's")
	}

	// Anything but a lone chunk goes to the protobuf codec.
	hdr := &indexv1.GetNarHeader{TotalSize: 1234, Compression: "xz"}
	if err := c.Unmarshal(whole(marshal(&indexv1.GetNarResponse{Msg: &indexv1.GetNarResponse_Header{Header: hdr}})), &got); err != nil ||
		!proto.Equal(got.GetHeader(), hdr) || got.GetChunk() != nil {
		t.Errorf("header: %v, %v", err, &got)
	}
	withExtra := protowire.AppendTag(chunkMsg(a[:10]), 99, protowire.VarintType)
	withExtra = protowire.AppendVarint(withExtra, 7)
	if err := c.Unmarshal(whole(withExtra), &got); err != nil || !bytes.Equal(got.GetChunk(), a[:10]) {
		t.Errorf("chunk with an unknown field: %v, %q", err, got.GetChunk())
	}
	if err := c.Unmarshal(whole([]byte{0x12, 0x05, 1, 2}), &got); err == nil {
		t.Errorf("a truncated chunk decoded: %v", &got)
	}
	var other indexv1.GetNarHeader
	if err := c.Unmarshal(whole(marshal(hdr)), &other); err != nil || !proto.Equal(&other, hdr) {
		t.Errorf("another message type: %v, %v", err, &other)
	}
}

// countingPool is a mem.BufferPool that counts what it hands out and gets
// back.
type countingPool struct {
	dirtyPool
	gets, puts int
}

func (p *countingPool) Get(n int) *[]byte { p.gets++; return p.dirtyPool.Get(n) }
func (p *countingPool) Put(b *[]byte)     { p.puts++; p.dirtyPool.Put(b) }

// TestUploadCodec: a chunk is encoded byte for byte as the protobuf codec
// would, into a buffer of the codec's pool that goes back to it once
// freed; everything else goes to the protobuf codec.
func TestUploadCodec(t *testing.T) {
	pool := &countingPool{}
	c := uploadCodec{proto: encoding.GetCodecV2("proto"), pool: pool}
	msgs := []*indexv1.PutNarRequest{
		{Msg: &indexv1.PutNarRequest_Chunk{Chunk: pattern("a", 300000)}},
		{Msg: &indexv1.PutNarRequest_Chunk{Chunk: pattern("b", 100)}},
		{Msg: &indexv1.PutNarRequest_Chunk{Chunk: []byte{}}},
		{Msg: &indexv1.PutNarRequest_Header{Header: &indexv1.PutNarHeader{ExpectedFileHash: "sha256:x", ExpectedCompression: "xz"}}},
	}
	for i, m := range msgs {
		want, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		got, err := c.Marshal(m)
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if !bytes.Equal(got.Materialize(), want) {
			t.Errorf("message %d: encoded as %d bytes unlike the protobuf codec's %d", i, got.Len(), len(want))
		}
		var back indexv1.PutNarRequest
		if err := proto.Unmarshal(got.Materialize(), &back); err != nil || !proto.Equal(&back, m) {
			t.Errorf("message %d does not decode to itself: %v", i, err)
		}
		got.Free()
	}
	// The chunks, and only they, went through the pool, and back.
	if pool.gets != 3 || pool.puts != 3 {
		t.Errorf("pool: %d gets, %d puts; want 3 of each (the chunks)", pool.gets, pool.puts)
	}
}
