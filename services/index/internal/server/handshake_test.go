package server_test

import (
	"context"
	"io"
	"log/slog"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/artifact"
	"github.com/nixcache/nixcache/services/index/internal/server"
)

// uploadStream is a client stream of an upload that yields msgs, then
// io.EOF.
type uploadStream[Req, Resp any] struct {
	grpc.ServerStream
	msgs []*Req
}

func (s *uploadStream[Req, Resp]) Context() context.Context { return context.Background() }

func (s *uploadStream[Req, Resp]) Recv() (*Req, error) {
	if len(s.msgs) == 0 {
		return nil, io.EOF
	}
	m := s.msgs[0]
	s.msgs = s.msgs[1:]
	return m, nil
}

func (s *uploadStream[Req, Resp]) SendAndClose(*Resp) error { return nil }

// TestUploadHandshake: both uploads refuse a stream whose first message
// is not a header, before reading anything else.
func TestUploadHandshake(t *testing.T) {
	arts, err := artifact.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	svc := server.New(slog.New(slog.DiscardHandler), nil, nil, nil, nil).WithArtifacts(arts, "")
	for _, tc := range []struct {
		name  string
		first bool // a data chunk first; else nothing
		want  string
	}{
		{"empty", false, "empty request: the first message must be a header"},
		{"data first", true, "the first message must be a header, not data"},
	} {
		t.Run("PutNar "+tc.name, func(t *testing.T) {
			s := &uploadStream[indexv1.PutNarRequest, indexv1.PutNarResponse]{}
			if tc.first {
				s.msgs = append(s.msgs, &indexv1.PutNarRequest{Msg: &indexv1.PutNarRequest_Chunk{Chunk: []byte("nix-archive-1")}})
			}
			wantCode(t, svc.PutNar(s), codes.InvalidArgument, tc.want)
		})
		t.Run("PutArtifact "+tc.name, func(t *testing.T) {
			s := &uploadStream[indexv1.PutArtifactRequest, indexv1.PutArtifactResponse]{}
			if tc.first {
				s.msgs = append(s.msgs, &indexv1.PutArtifactRequest{Msg: &indexv1.PutArtifactRequest_Chunk{Chunk: []byte("log")}})
			}
			wantCode(t, svc.PutArtifact(s), codes.InvalidArgument, tc.want)
		})
	}
}
