package localstore

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/nixcache/nixcache/nix/nixhash"
	"github.com/nixcache/nixcache/nix/signature"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
)

// signBatch is the most fingerprints sent in one call to the signer.
const signBatch = 1000

// sign has the signer sign infos (at most signBatch), within the sign
// timeout, and puts the signatures first in each info's, before those Nix
// has. On error the infos are unchanged.
func (s *Store) sign(ctx context.Context, infos []*indexv1.PathInfo) error {
	fps := make([]string, len(infos))
	for i, info := range infos {
		h, err := nixhash.Parse(info.GetNarHash())
		if err != nil {
			return fmt.Errorf("sign %s: %w", info.GetStorePath(), err)
		}
		fps[i] = signature.Fingerprint(s.cfg.StoreDir, info.GetStorePath(), h, info.GetNarSize(), info.GetReferences())
	}
	callCtx, cancel := context.WithTimeout(ctx, s.cfg.SignTimeout)
	defer cancel()
	res, err := s.signer.Sign(callCtx, fps)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("sign: %w", ctx.Err())
		}
		return fmt.Errorf("signer unavailable: %w", err)
	}
	for i := range infos {
		if len(res[i]) == 0 {
			return errors.New("signer unavailable: it returned no signature (has it an active key?)")
		}
		for _, sig := range res[i] {
			if _, _, err := signature.SplitSignature(sig); err != nil {
				return fmt.Errorf("signer unavailable: it returned an invalid signature: %w", err)
			}
		}
	}
	for i, info := range infos {
		sigs := slices.Clone(res[i])
		for _, sig := range info.GetSignatures() {
			if !slices.Contains(sigs, sig) {
				sigs = append(sigs, sig)
			}
		}
		info.Signatures = sigs
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
