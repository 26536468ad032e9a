package admin

import (
	"context"
	"maps"
	"slices"

	"github.com/nixcache/nixcache/nix/signature"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	signerv1 "github.com/nixcache/nixcache/proto/nixcache/signer/v1"
	"github.com/nixcache/nixcache/services/index/internal/catalog"
	"github.com/nixcache/nixcache/services/index/internal/fault"
	"github.com/nixcache/nixcache/services/index/internal/signerclient"
)

// signBatch is the most fingerprints sent in one call to the signer.
const signBatch = 1000

func keyInfo(k *signerv1.PublicKey) *indexv1.KeyInfo {
	return &indexv1.KeyInfo{Name: k.GetName(), PublicKey: k.GetPublicKey(), Active: k.GetActive()}
}

// ListKeys lists the signer's public keys.
func (s *Service) ListKeys(ctx context.Context, req *indexv1.ListKeysRequest) (*indexv1.ListKeysResponse, error) {
	keys, err := s.keys(ctx)
	if err != nil {
		return nil, fault.Status(err)
	}
	resp := &indexv1.ListKeysResponse{}
	for _, k := range keys {
		resp.Keys = append(resp.Keys, keyInfo(k))
	}
	return resp, nil
}

func (s *Service) keys(ctx context.Context) ([]*signerv1.PublicKey, error) {
	return s.signer.Keys(ctx, s.cfg.SignTimeout)
}

// validKeyName checks a key name as Nix takes it.
func validKeyName(field, name string) error {
	if name == "" {
		return fault.Invalid("%s is empty", field)
	}
	if _, err := signature.ParsePublicKey(name + ":AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="); err != nil {
		return fault.Invalid("%s %q: not a valid key name", field, name)
	}
	return nil
}

// AddKey makes a new key and re-signs every path with the active keys.
func (s *Service) AddKey(req *indexv1.AddKeyRequest, stream indexv1.AdminService_AddKeyServer) error {
	ctx := stream.Context()
	if err := validKeyName("name", req.GetName()); err != nil {
		return fault.Status(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	generated, err := s.signer.GenerateKey(ctx, s.cfg.SignTimeout, req.GetName())
	if err != nil {
		return fault.Status(err)
	}
	key := keyInfo(generated)
	s.cfg.Log.InfoContext(ctx, "added signing key; re-signing every path", "key", key.GetName())
	if err := stream.Send(&indexv1.AddKeyResponse{Key: key}); err != nil {
		return err
	}
	keys, err := s.keys(ctx)
	if err != nil {
		return fault.Status(err)
	}
	ours := map[string]bool{}
	for _, k := range keys {
		ours[k.GetName()] = true
	}
	err = s.rewrite(ctx, func(ctx context.Context, infos []*indexv1.PathInfo) ([][]string, error) {
		return s.resign(ctx, infos, ours)
	}, func(done, total uint64) error {
		return stream.Send(&indexv1.AddKeyResponse{Key: key, Resigned: done, Total: total, Done: done == total})
	})
	return fault.Status(err)
}

// resign returns the new signatures of infos: the active keys', then the
// uploader's (by keys not ours).
func (s *Service) resign(ctx context.Context, infos []*indexv1.PathInfo, ours map[string]bool) ([][]string, error) {
	paths := signerclient.Paths{Signer: s.signer, StoreDir: s.cfg.StoreDir, Timeout: s.cfg.SignTimeout}
	res, err := paths.Sign(ctx, infos)
	if err != nil {
		return nil, err
	}
	out := make([][]string, len(infos))
	for i, info := range infos {
		out[i] = signerclient.Merge(res[i], info.GetSignatures(), ours)
	}
	return out, nil
}

// RetireKey retires a key and removes its signatures from every path.
func (s *Service) RetireKey(req *indexv1.RetireKeyRequest, stream indexv1.AdminService_RetireKeyServer) error {
	ctx := stream.Context()
	if err := validKeyName("name", req.GetName()); err != nil {
		return fault.Status(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.signer.RetireKey(ctx, s.cfg.SignTimeout, req.GetName()); err != nil {
		return fault.Status(err)
	}
	s.cfg.Log.InfoContext(ctx, "retired signing key; removing its signatures", "key", req.GetName())
	err := s.rewrite(ctx, func(_ context.Context, infos []*indexv1.PathInfo) ([][]string, error) {
		out := make([][]string, len(infos))
		for i, info := range infos {
			out[i] = slices.DeleteFunc(slices.Clone(info.GetSignatures()), func(sig string) bool {
				name, _, err := signature.SplitSignature(sig)
				return err == nil && name == req.GetName()
			})
		}
		return out, nil
	}, func(done, total uint64) error {
		return stream.Send(&indexv1.RetireKeyResponse{Updated: done, Total: total, Done: done == total})
	})
	return fault.Status(err)
}

// rewrite replaces the signatures of every pushed and signed local path
// with what sigs returns for them, signBatch at a time, reporting progress
// after each batch (and once when there is nothing to do).
func (s *Service) rewrite(ctx context.Context, sigs func(context.Context, []*indexv1.PathInfo) ([][]string, error), progress func(done, total uint64) error) error {
	pushed, local, err := s.cat.SignedInfos()
	if err != nil {
		return err
	}
	total := uint64(len(pushed) + len(local))
	if total == 0 {
		return progress(0, 0)
	}
	var done uint64
	for _, group := range []struct {
		infos map[string]*indexv1.PathInfo
		local bool
	}{{pushed, false}, {local, true}} {
		keys := slices.Sorted(maps.Keys(group.infos))
		for i := 0; i < len(keys); i += signBatch {
			batch := keys[i:min(i+signBatch, len(keys))]
			infos := make([]*indexv1.PathInfo, len(batch))
			for j, h := range batch {
				infos[j] = group.infos[h]
			}
			newSigs, err := sigs(ctx, infos)
			if err != nil {
				return err
			}
			updates := make(map[string]catalog.SignatureUpdate, len(batch))
			for j, h := range batch {
				updates[h] = catalog.SignatureUpdate{NarHash: infos[j].GetNarHash(), Signatures: newSigs[j]}
			}
			if _, err := s.cat.ReplaceSignatures(updates, group.local); err != nil {
				return err
			}
			done += uint64(len(batch))
			if err := progress(done, total); err != nil {
				return err
			}
		}
	}
	return nil
}
