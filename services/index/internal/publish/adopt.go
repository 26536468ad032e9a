package publish

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nixcache/nixcache/nix/compression"
	"github.com/nixcache/nixcache/nix/nixhash"
	"github.com/nixcache/nixcache/nix/storepath"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/fault"
	"github.com/nixcache/nixcache/services/index/internal/narstore"
)

// HostStore is the host's Nix store as the index serves it (package
// localstore).
type HostStore interface {
	// Find returns the info of the host path with this hash part, signed
	// or not, or an error of class fault.ErrNotFound.
	Find(ctx context.Context, hashPart string) (*indexv1.PathInfo, error)
	// OpenNar opens a byte range (length 0: to the end) of its NAR.
	OpenNar(ctx context.Context, info *indexv1.PathInfo, offset, length uint64) (*narstore.Range, error)
}

// WithHost has the publisher take copies of the host paths that pushed
// paths refer to, into nars.
func (p *Publisher) WithHost(h HostStore, nars *narstore.Store) *Publisher {
	p.host, p.nars = h, nars
	return p
}

// adoptCompression is how the copies of host paths are stored.
const adoptCompression = compression.Zstd

// adopt returns the cache's own copies of the paths of the host's store
// that the closure of refs holds and that are not published, references
// first, their NAR files stored and recorded and their records signed.
//
// A pushed path may refer to a path the cache serves from the host's
// store (nix copy skips what the cache has, whichever way it has it). The
// copy is taken now, at publish, rather than when the host deletes the
// path: by then its files are gone, and noticing the deletion in time
// would need a hook into the host's garbage collector that a binary cache
// does not have. The cost is the disk space of the copies, compressed.
func (p *Publisher) adopt(ctx context.Context, self storepath.Path, refs []string) ([]*indexv1.PathInfo, error) {
	if p.host == nil {
		return nil, nil
	}
	var order []*indexv1.PathInfo
	seen := map[string]bool{self.HashPart: true}
	var visit func(base string) error
	visit = func(base string) error {
		rp, err := storepath.ParseBase(base)
		if err != nil || seen[rp.HashPart] {
			return nil //nolint:nilerr // a bad reference is refused by the publishing checks, with their message
		}
		seen[rp.HashPart] = true
		want := rp.Absolute(p.storeDir)
		if info, err := p.catalog.PathInfo(rp.HashPart); err == nil && info.GetStorePath() == want {
			return nil // published: so is its closure
		} else if err != nil && !errors.Is(err, fault.ErrNotFound) {
			return err
		}
		info, err := p.host.Find(ctx, rp.HashPart)
		if errors.Is(err, fault.ErrNotFound) || (err == nil && info.GetStorePath() != want) {
			return nil // the catalogue says it is not in the cache
		}
		if err != nil {
			return fmt.Errorf("copy %s from the host's store: %w", want, err)
		}
		for _, r := range info.GetReferences() {
			if err := visit(r); err != nil {
				return err
			}
		}
		order = append(order, info)
		return nil
	}
	for _, r := range refs {
		if err := visit(r); err != nil {
			return nil, err
		}
	}
	if len(order) == 0 {
		return nil, nil
	}
	sigs, err := p.signing().Sign(ctx, order)
	if err != nil {
		return nil, err
	}
	out := make([]*indexv1.PathInfo, len(order))
	for i, info := range order {
		nf, err := p.copyNar(ctx, info)
		if err != nil {
			return nil, err
		}
		ext, err := compression.Extension(nf.GetCompression())
		if err != nil {
			return nil, err
		}
		c := proto.Clone(info).(*indexv1.PathInfo)
		c.Signatures = appendNew(c.GetSignatures(), sigs[i]...)
		c.File = nf
		// The cache's own copy from now on: served from its file, no
		// longer from the host's store.
		c.HostStore = false
		c.Url = "nar/" + strings.TrimPrefix(nf.GetFileHash(), "sha256:") + ".nar" + ext
		if c.RegistrationTime == nil {
			c.RegistrationTime = timestamppb.New(p.now())
		}
		out[i] = c
	}
	return out, nil
}

// copyNar stores the NAR of a host path, compressed, through the verified
// ingest, and records it: the bytes read must hash to the path's NarHash
// (a path deleted or changed on the host meanwhile is refused).
func (p *Publisher) copyNar(ctx context.Context, info *indexv1.PathInfo) (*indexv1.NarFile, error) {
	rg, err := p.host.OpenNar(ctx, info, 0, 0)
	if err != nil {
		return nil, fmt.Errorf("copy %s from the host's store: %w", info.GetStorePath(), err)
	}
	defer rg.Close()
	pr, pw := io.Pipe()
	readErr := make(chan error, 1)
	go func() {
		zw, err := compression.NewWriter(adoptCompression, pw)
		if err == nil {
			_, err = io.Copy(zw, rg)
			readErr <- err
			if cerr := zw.Close(); err == nil {
				err = cerr
			}
		} else {
			readErr <- nil
		}
		pw.CloseWithError(err)
	}()
	nf, err := p.nars.Ingest(ctx, pr, narstore.Expect{Compression: adoptCompression})
	pr.CloseWithError(errors.New("copy ended"))
	rerr := <-readErr
	switch {
	case err != nil && ctx.Err() != nil:
		return nil, fmt.Errorf("copy %s from the host's store: %w", info.GetStorePath(), ctx.Err())
	case err != nil && (rerr != nil || errors.Is(err, fault.ErrInvalid)):
		// The files are not the NAR the daemon described: not a NAR, or
		// cut short (a file shrank, the path went).
		return nil, fault.Precondition("copy %s from the host's store: %v: it changed or went meanwhile", info.GetStorePath(), err)
	case err != nil:
		return nil, fmt.Errorf("copy %s from the host's store: %w", info.GetStorePath(), err)
	case nf.GetNarHash() != info.GetNarHash() || nf.GetNarSize() != info.GetNarSize():
		p.dropUnrecorded(nf)
		return nil, fault.Precondition("copy %s from the host's store: its NAR hashes to %s (%d bytes), not %s (%d bytes): it changed or went meanwhile",
			info.GetStorePath(), nf.GetNarHash(), nf.GetNarSize(), info.GetNarHash(), info.GetNarSize())
	}
	fh, err := nixhash.Parse(nf.GetFileHash())
	if err != nil {
		return nil, fmt.Errorf("copy %s from the host's store: stored file hash: %w", info.GetStorePath(), err)
	}
	return p.catalog.AddStoredNarFile(fh.NixBase32(), nf, func() error {
		_, err := p.nars.Stat(ctx, nf)
		return err
	})
}

// dropUnrecorded removes a NAR file just stored that is not the one
// wanted, unless a record names it (the same file is another path's).
func (p *Publisher) dropUnrecorded(nf *indexv1.NarFile) {
	fh, err := nixhash.Parse(nf.GetFileHash())
	if err != nil {
		return
	}
	if _, err := p.catalog.NarFile(fh.NixBase32()); !errors.Is(err, fault.ErrNotFound) {
		return
	}
	_ = p.nars.Remove(nf) // else an orphan, moved aside at the next start
}
