package app

import (
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"google.golang.org/grpc"

	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
)

// stuckIndex starts every NAR stream and never finishes it.
type stuckIndex struct {
	indexv1.UnimplementedIndexServiceServer
	canceled chan struct{}
}

func (s *stuckIndex) GetNar(_ *indexv1.GetNarRequest, stream indexv1.IndexService_GetNarServer) error {
	stream.Send(&indexv1.GetNarResponse{Msg: &indexv1.GetNarResponse_Header{Header: &indexv1.GetNarHeader{TotalSize: 1 << 30, Compression: "none"}}})
	stream.Send(&indexv1.GetNarResponse{Msg: &indexv1.GetNarResponse_Chunk{Chunk: make([]byte, 100)}})
	<-stream.Context().Done()
	close(s.canceled)
	return stream.Context().Err()
}

// TestShutdownCutsStuckDownloads checks that Run returns after the grace
// period even while a download is stuck, and that the cut cancels the
// index's stream.
func TestShutdownCutsStuckDownloads(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	index := &stuckIndex{canceled: make(chan struct{})}
	gs := grpc.NewServer()
	indexv1.RegisterIndexServiceServer(gs, index)
	go gs.Serve(lis)
	defer gs.Stop()

	o := options(t)
	o.IndexAddr = lis.Addr().String()
	o.ShutdownGrace = 100 * time.Millisecond
	url, stop := start(t, o)

	resp, err := http.Get(url + "/nar/0123456789abcdfghijklmnpqrsvwxyz.nar")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if _, err := io.ReadFull(resp.Body, make([]byte, 100)); err != nil {
		t.Fatalf("status %d, read: %v", resp.StatusCode, err)
	}
	if err := stop(); err != nil {
		t.Errorf("Run: %v", err)
	}
	select {
	case <-index.canceled:
	case <-time.After(10 * time.Second):
		t.Error("the index's stream was not canceled when the download was cut")
	}
}
