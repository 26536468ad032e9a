package server

import (
	"bytes"
	"testing"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
)

// whole is b as gRPC hands a message over (grpcutil.LoneBytesField's test
// cuts it into frames).
func whole(b []byte) mem.BufferSlice { return mem.BufferSlice{mem.SliceBuffer(b)} }

// TestUploadCodec: a lone chunk decodes into a pooled buffer; a header, a
// chunk larger than pooled buffers and a chunk with another field decode
// as the protobuf codec decodes them.
func TestUploadCodec(t *testing.T) {
	c := uploadCodec{proto: encoding.GetCodecV2("proto")}
	marshal := func(m proto.Message) []byte {
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	chunkMsg := func(data []byte) []byte {
		return marshal(&indexv1.PutNarRequest{Msg: &indexv1.PutNarRequest_Chunk{Chunk: data}})
	}
	small, full, large := bytes.Repeat([]byte("s"), 1000), bytes.Repeat([]byte("f"), 256<<10), bytes.Repeat([]byte("l"), 300000)
	for _, tt := range []struct {
		name   string
		data   []byte
		pooled bool
	}{{"small", small, true}, {"full", full, true}, {"larger than a pooled buffer", large, false}} {
		var got indexv1.PutNarRequest
		if err := c.Unmarshal(whole(chunkMsg(tt.data)), &got); err != nil || !bytes.Equal(got.GetChunk(), tt.data) {
			t.Fatalf("%s: %v, %d bytes", tt.name, err, len(got.GetChunk()))
		}
		if pooled := cap(got.GetChunk()) == 256<<10; pooled != tt.pooled {
			t.Errorf("%s: decoded into a buffer of capacity %d; pooled %v, want %v", tt.name, cap(got.GetChunk()), pooled, tt.pooled)
		}
		releaseChunk(got.GetChunk())
	}

	hdr := &indexv1.PutNarHeader{ExpectedFileHash: "sha256:x", ExpectedCompression: "xz"}
	var got indexv1.PutNarRequest
	if err := c.Unmarshal(whole(marshal(&indexv1.PutNarRequest{Msg: &indexv1.PutNarRequest_Header{Header: hdr}})), &got); err != nil ||
		!proto.Equal(got.GetHeader(), hdr) || got.GetChunk() != nil {
		t.Errorf("header: %v, %v", err, &got)
	}
	withExtra := protowire.AppendTag(chunkMsg(small), 99, protowire.VarintType)
	withExtra = protowire.AppendVarint(withExtra, 7)
	got.Reset()
	if err := c.Unmarshal(whole(withExtra), &got); err != nil || !bytes.Equal(got.GetChunk(), small) ||
		len(got.ProtoReflect().GetUnknown()) == 0 {
		t.Errorf("chunk with an unknown field: %v; it must keep the field, as the protobuf codec does", err)
	}
}
