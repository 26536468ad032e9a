package admin_test

import (
	"context"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/server"
)

func TestFindMissingPaths(t *testing.T) {
	e := newEnv(t)
	a := e.push("a")
	b := e.push("b", a.GetStorePath())
	absent := storeDir + "/0000000000000000000000000000000a-absent"
	bBase := strings.TrimPrefix(b.GetStorePath(), storeDir+"/")
	aHash := strings.TrimPrefix(a.GetStorePath(), storeDir+"/")[:32]
	ctx := context.Background()

	resp, err := e.admin.FindMissingPaths(ctx, &indexv1.FindMissingPathsRequest{
		Paths: []string{absent, a.GetStorePath(), bBase, aHash, "1111111111111111111111111111111a"},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{absent, "1111111111111111111111111111111a"}
	if got := resp.GetMissing(); !slices.Equal(got, want) {
		t.Errorf("missing = %q, want %q", got, want)
	}

	for _, tc := range []struct {
		name  string
		paths []string
	}{
		{"not a path", []string{"../etc/passwd"}},
		{"other store", []string{"/gnu/store/0000000000000000000000000000000a-x"}},
		{"too many", make([]string, server.MaxCheckPaths+1)},
	} {
		_, err := e.admin.FindMissingPaths(ctx, &indexv1.FindMissingPathsRequest{Paths: tc.paths})
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: err = %v, want InvalidArgument", tc.name, err)
		}
	}
}
