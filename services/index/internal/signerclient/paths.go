package signerclient

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/nixcache/nixcache/nix/nixhash"
	"github.com/nixcache/nixcache/nix/signature"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/fault"
)

// Signer signs fingerprints with the cache's keys: a *Client, or a test's
// fake.
type Signer interface {
	// Sign returns the signatures of each fingerprint, in order.
	Sign(ctx context.Context, fingerprints []string) ([][]string, error)
}

// Paths turns store paths into the cache's signatures: the one signing
// policy of the index, used to publish a path, to copy host paths a
// pushed one refers to, to serve the host's store and to re-sign every
// path with a new key.
type Paths struct {
	Signer Signer
	// StoreDir is the store directory the fingerprints name.
	StoreDir string
	// Timeout bounds each call to the signer.
	Timeout time.Duration
}

// Fingerprint is what the cache's keys sign for info.
func (p Paths) Fingerprint(info *indexv1.PathInfo) (string, error) {
	h, err := nixhash.Parse(info.GetNarHash())
	if err != nil {
		return "", fmt.Errorf("sign %s: NarHash: %w", info.GetStorePath(), err)
	}
	return signature.Fingerprint(p.StoreDir, info.GetStorePath(), h, info.GetNarSize(), info.GetReferences()), nil
}

// Sign returns the signer's signatures of each info, in order, as
// SignFingerprints does; an info whose NarHash does not parse is an error.
func (p Paths) Sign(ctx context.Context, infos []*indexv1.PathInfo) ([][]string, error) {
	fps := make([]string, len(infos))
	for i, info := range infos {
		fp, err := p.Fingerprint(info)
		if err != nil {
			return nil, err
		}
		fps[i] = fp
	}
	return p.SignFingerprints(ctx, fps)
}

// SignFingerprints has the signer sign fingerprints, in one call within
// Timeout, and returns its signatures of each, in order: at least one
// each, every one well formed. When ctx ends first the error wraps ctx's;
// every other error is of class fault.ErrUnavailable ("signer
// unavailable: ...").
func (p Paths) SignFingerprints(ctx context.Context, fingerprints []string) ([][]string, error) {
	callCtx, cancel := context.WithTimeout(ctx, p.Timeout)
	defer cancel()
	res, err := p.Signer.Sign(callCtx, fingerprints)
	if err != nil {
		if ctx.Err() != nil {
			// The caller went away: not the signer's fault.
			return nil, fmt.Errorf("sign: %w", ctx.Err())
		}
		return nil, fault.Unavailable("signer unavailable: %v", err)
	}
	if len(res) != len(fingerprints) || slices.ContainsFunc(res, func(s []string) bool { return len(s) == 0 }) {
		return nil, fault.Unavailable("signer unavailable: it returned no signature (has it an active key?)")
	}
	for _, sigs := range res {
		for _, sig := range sigs {
			if _, _, err := signature.SplitSignature(sig); err != nil {
				return nil, fault.Unavailable("signer unavailable: it returned an invalid signature: %v", err)
			}
		}
	}
	return res, nil
}

// Merge returns the signer's new signatures of a path, then those of kept
// it does not hold, except those by a key in ours (the cache's keys,
// whose signatures the signer's replace); a nil ours keeps every one.
func Merge(signer, kept []string, ours map[string]bool) []string {
	out := slices.Clone(signer)
	for _, sig := range kept {
		if name, _, err := signature.SplitSignature(sig); err == nil && ours[name] || slices.Contains(out, sig) {
			continue
		}
		out = append(out, sig)
	}
	return out
}
