package localstore

import (
	"context"

	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/signerclient"
)

// signBatch is the most fingerprints sent in one call to the signer.
const signBatch = 1000

// sign has the signer sign infos (at most signBatch), within the sign
// timeout, and puts the signatures first in each info's, before those Nix
// has. On error the infos are unchanged.
func (s *Store) sign(ctx context.Context, infos []*indexv1.PathInfo) error {
	paths := signerclient.Paths{Signer: s.signer, StoreDir: s.cfg.StoreDir, Timeout: s.cfg.SignTimeout}
	res, err := paths.Sign(ctx, infos)
	if err != nil {
		return err
	}
	for i, info := range infos {
		info.Signatures = signerclient.Merge(res[i], info.GetSignatures(), nil)
	}
	return nil
}

// maxSignBatchesPerPoll bounds the background signing done in one poll.
const maxSignBatchesPerPoll = 100

// SignPending signs local paths recorded unsigned (because the signer was
// down), in batches, and returns how many it signed.
func (s *Store) SignPending(ctx context.Context) (int, error) {
	signed := 0
	for range maxSignBatchesPerPoll {
		infos, err := s.cat.UnsignedLocal(signBatch)
		if err != nil || len(infos) == 0 {
			return signed, err
		}
		if err := s.sign(ctx, infos); err != nil {
			return signed, err
		}
		n, err := s.cat.SignedLocal(infos)
		signed += n
		if err != nil || n == 0 || len(infos) < signBatch {
			return signed, err
		}
	}
	return signed, nil
}
