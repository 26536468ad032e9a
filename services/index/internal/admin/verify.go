package admin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/nixcache/nixcache/nix/compression"
	"github.com/nixcache/nixcache/nix/nixhash"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/catalog"
	"github.com/nixcache/nixcache/services/index/internal/fault"
)

// Verify re-hashes stored NARs and quarantines the bad ones.
func (s *Service) Verify(req *indexv1.VerifyRequest, stream indexv1.AdminService_VerifyServer) error {
	ctx := stream.Context()
	var targets []*catalog.Entry
	if len(req.GetPaths()) > 0 {
		for i, arg := range req.GetPaths() {
			h, err := s.hashPartOf(fmt.Sprintf("paths[%d]", i), arg)
			if err != nil {
				return fault.Status(err)
			}
			e, err := s.cat.Lookup(h)
			if err != nil {
				return fault.Status(err)
			}
			if e.Local {
				return fault.Status(fault.Precondition("paths[%d]: %s is served from the host's store: no stored NAR to verify", i, arg))
			}
			targets = append(targets, e)
		}
	} else {
		snap, err := s.cat.Snapshot(false)
		if err != nil {
			return fault.Status(err)
		}
		for _, e := range snap.Paths {
			if !e.Quarantined {
				targets = append(targets, e)
			}
		}
		slices.SortFunc(targets, func(a, b *catalog.Entry) int { return compareStrings(a.Info.GetStorePath(), b.Info.GetStorePath()) })
	}
	var bad uint64
	for i, e := range targets {
		problem := ""
		if e.Quarantined {
			problem = "quarantined already"
		} else if err := s.check(ctx, e.Info); err != nil {
			if ctx.Err() != nil {
				return fault.Status(ctx.Err())
			}
			problem = err.Error()
			if err := s.quarantine(ctx, e, problem); err != nil {
				return fault.Status(err)
			}
		}
		if problem != "" {
			bad++
		}
		err := stream.Send(&indexv1.VerifyResponse{StorePath: e.Info.GetStorePath(), Ok: problem == "", Problem: problem,
			Checked: uint64(i + 1), Total: uint64(len(targets)), Bad: bad})
		if err != nil {
			return err
		}
	}
	return stream.Send(&indexv1.VerifyResponse{Checked: uint64(len(targets)), Total: uint64(len(targets)), Bad: bad, Done: true})
}

func compareStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func (s *Service) quarantine(ctx context.Context, e *catalog.Entry, problem string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	moved, err := s.cat.Quarantine(e.HashPart, e.Info.GetNarHash())
	if err != nil {
		return err
	}
	if len(moved) > 0 {
		s.cfg.Log.WarnContext(ctx, "quarantined a path that failed verification", "store_path", e.Info.GetStorePath(), "problem", problem)
	}
	if len(moved) > 1 {
		// Their closure is no longer served: neither are they.
		s.cfg.Log.WarnContext(ctx, "quarantined the paths that refer to it", "store_path", e.Info.GetStorePath(), "referrers", moved[1:])
	}
	return nil
}

// check reads the stored file of info and compares it, and the NAR it
// decompresses to, with the hashes and sizes recorded.
func (s *Service) check(ctx context.Context, info *indexv1.PathInfo) error {
	nf := info.GetFile()
	if nf == nil {
		return errors.New("no NAR file recorded")
	}
	wantFile, err := nixhash.Parse(nf.GetFileHash())
	if err != nil {
		return fmt.Errorf("recorded file hash: %w", err)
	}
	wantNar, err := narHashOf(info)
	if err != nil {
		return err
	}
	// A file longer than recorded would read as sound below: only its
	// recorded length is read.
	stored, err := s.nars.Stat(ctx, nf)
	if err != nil {
		return fmt.Errorf("stat NAR file: %w", err)
	}
	if uint64(stored) != nf.GetFileSize() {
		return fmt.Errorf("the stored NAR file is %d bytes, not %d", stored, nf.GetFileSize())
	}
	rg, err := s.nars.Open(ctx, nf, false, 0, 0)
	if err != nil {
		return err
	}
	defer rg.Close()
	fileHasher, narHasher := wantFile.Algo.New(), wantNar.Algo.New()
	file := &countingReader{r: io.TeeReader(rg, fileHasher)}
	dec, err := compression.NewReader(nf.GetCompression(), file)
	if err != nil {
		return err
	}
	defer dec.Close()
	narSize, err := io.Copy(narHasher, dec)
	if err != nil {
		return fmt.Errorf("read NAR file: %w", err)
	}
	if _, err := io.Copy(io.Discard, file); err != nil {
		return fmt.Errorf("read NAR file: %w", err)
	}
	if got := nixhash.FromHasher(wantFile.Algo, fileHasher); !got.Equal(wantFile) {
		return fmt.Errorf("the NAR file hashes to %s, not %s", got, wantFile)
	}
	if file.n != nf.GetFileSize() {
		return fmt.Errorf("the NAR file is %d bytes, not %d", file.n, nf.GetFileSize())
	}
	if uint64(narSize) != info.GetNarSize() {
		return fmt.Errorf("the NAR is %d bytes, not NarSize %d", narSize, info.GetNarSize())
	}
	if got := nixhash.FromHasher(wantNar.Algo, narHasher); !got.Equal(wantNar) {
		return fmt.Errorf("the NAR hashes to %s, not NarHash %s", got, wantNar)
	}
	return nil
}

type countingReader struct {
	r io.Reader
	n uint64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += uint64(n)
	return n, err
}
