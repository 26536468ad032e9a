// Package signerclient is the index's view of the signer service: sign
// fingerprints, list and manage the keys. Paths is the one place that
// turns store paths into the cache's signatures (fingerprint, timeout,
// checks of the answer, error classes), and Merge the one rule of which
// signatures a path keeps beside them.
package signerclient

import (
	"context"
	"fmt"

	"github.com/nixcache/nixcache/nix/signature"
	signerv1 "github.com/nixcache/nixcache/proto/nixcache/signer/v1"
)

// Client calls a SignerService.
type Client struct {
	rpc signerv1.SignerServiceClient
}

// New returns a Client over rpc.
func New(rpc signerv1.SignerServiceClient) *Client { return &Client{rpc: rpc} }

// Sign returns the signatures ("<key name>:<base64>") of each fingerprint,
// in order.
func (c *Client) Sign(ctx context.Context, fingerprints []string) ([][]string, error) {
	resp, err := c.rpc.Sign(ctx, &signerv1.SignRequest{Fingerprints: fingerprints})
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	if len(resp.GetResults()) != len(fingerprints) {
		return nil, fmt.Errorf("sign: %d results for %d fingerprints", len(resp.GetResults()), len(fingerprints))
	}
	out := make([][]string, len(fingerprints))
	for i, r := range resp.GetResults() {
		out[i] = r.GetSignatures()
	}
	return out, nil
}

// PublicKeys returns the public halves of every key the signer holds,
// active or not.
func (c *Client) PublicKeys(ctx context.Context) ([]signature.PublicKey, error) {
	resp, err := c.rpc.ListKeys(ctx, &signerv1.ListKeysRequest{})
	if err != nil {
		return nil, fmt.Errorf("list keys: %w", err)
	}
	keys := make([]signature.PublicKey, 0, len(resp.GetKeys()))
	for _, k := range resp.GetKeys() {
		pk, err := signature.ParsePublicKey(k.GetPublicKey())
		if err != nil {
			return nil, fmt.Errorf("list keys: key %q: %w", k.GetName(), err)
		}
		keys = append(keys, pk)
	}
	return keys, nil
}
