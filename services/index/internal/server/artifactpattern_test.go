package server_test

import (
	"context"
	"log/slog"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/nixcache/nixcache/platform/auth"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/artifact"
	"github.com/nixcache/nixcache/services/index/internal/server"
)

// identifiedUpload is an upload stream whose context carries a push
// token limited to a pattern, as the index's auth interceptor leaves it.
type identifiedUpload struct {
	uploadStream[indexv1.PutArtifactRequest, indexv1.PutArtifactResponse]
	ctx context.Context
}

func (s *identifiedUpload) Context() context.Context { return s.ctx }

// TestPutArtifactPushPattern: a token limited to some store-path names
// writes the logs of such derivations and listings, and no realisation,
// debug-info link or log of another name.
func TestPutArtifactPushPattern(t *testing.T) {
	arts, err := artifact.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	svc := server.New(slog.New(slog.DiscardHandler), nil, nil, nil, nil).WithArtifacts(arts, "")
	ctx := auth.WithIdentity(context.Background(), auth.Identity{Name: "ci", Scopes: auth.Push, PushPattern: "*-myproject-*"})
	hash := "0123456789abcdfghijklmnpqrsvwxyz"
	for _, tc := range []struct {
		kind indexv1.ArtifactKind
		key  string
		body string
		code codes.Code
	}{
		{indexv1.ArtifactKind_ARTIFACT_KIND_LOG, hash + "-lib-myproject-1.0.drv", "built\n", codes.OK},
		{indexv1.ArtifactKind_ARTIFACT_KIND_LOG, hash + "-hello-2.12.drv", "built\n", codes.PermissionDenied},
		{indexv1.ArtifactKind_ARTIFACT_KIND_LISTING, hash, `{"version":1,"root":{"type":"regular","size":0}}`, codes.OK},
		{indexv1.ArtifactKind_ARTIFACT_KIND_REALISATION, "sha256:" + "ab" + "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd" + "!out", `{}`, codes.PermissionDenied},
		{indexv1.ArtifactKind_ARTIFACT_KIND_DEBUG_INFO, "0123456789abcdef", `{"archive":"../nar/x.nar","member":"y"}`, codes.PermissionDenied},
	} {
		t.Run(tc.kind.String()+" "+tc.key, func(t *testing.T) {
			s := &identifiedUpload{ctx: ctx}
			s.msgs = []*indexv1.PutArtifactRequest{
				{Msg: &indexv1.PutArtifactRequest_Header{Header: &indexv1.PutArtifactHeader{Kind: tc.kind, Key: tc.key}}},
				{Msg: &indexv1.PutArtifactRequest_Chunk{Chunk: []byte(tc.body)}},
			}
			err := svc.PutArtifact(s)
			if tc.code == codes.OK {
				if err != nil {
					t.Fatalf("PutArtifact: %v", err)
				}
				return
			}
			wantCode(t, err, tc.code, "*-myproject-*")
		})
	}
}
