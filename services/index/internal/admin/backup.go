package admin

import (
	"context"
	"errors"
	"fmt"
	"io"

	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/fault"
)

// backupChunk is how many bytes of the copy one BackupResponse carries.
var backupChunk = 256 << 10

// Backup streams a consistent copy of the catalogue, taken at the call
// (catalog.Backup), the size first.
func (s *Service) Backup(req *indexv1.BackupRequest, stream indexv1.AdminService_BackupServer) error {
	f, size, err := s.cat.Backup()
	if err != nil {
		return fault.Status(err)
	}
	defer f.Close()
	s.cfg.Log.Info("catalogue backup", "bytes", size)
	resp := &indexv1.BackupResponse{Size: uint64(size)}
	var sent int64
	for {
		// A fresh buffer per Send: the message may still be referenced.
		buf := make([]byte, backupChunk)
		n, err := io.ReadFull(f, buf)
		if n > 0 {
			resp.Data = buf[:n]
			if err := stream.Send(resp); err != nil {
				return err
			}
			sent += int64(n)
			resp = &indexv1.BackupResponse{}
		}
		if errors.Is(err, io.ErrUnexpectedEOF) {
			err = io.EOF
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fault.Status(fmt.Errorf("backup: read the copy: %w", err))
		}
	}
	if sent != size {
		return fault.Status(fmt.Errorf("backup: the copy has %d bytes, want %d", sent, size))
	}
	return nil
}

// WriteBackup calls Backup and writes the copy to w; it fails when the
// copy ends shorter or longer than the size the index announced, so a
// cut-off stream never passes for a backup.
func WriteBackup(ctx context.Context, client indexv1.AdminServiceClient, w io.Writer) (int64, error) {
	stream, err := client.Backup(ctx, &indexv1.BackupRequest{})
	if err != nil {
		return 0, err
	}
	var size, got int64
	for first := true; ; first = false {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return got, err
		}
		if first {
			size = int64(resp.GetSize())
		}
		n, err := w.Write(resp.GetData())
		got += int64(n)
		if err != nil {
			return got, err
		}
	}
	if got != size {
		return got, fmt.Errorf("the copy ended after %d bytes of %d", got, size)
	}
	return got, nil
}
