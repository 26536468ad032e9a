package signerclient

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	signerv1 "github.com/nixcache/nixcache/proto/nixcache/signer/v1"
	"github.com/nixcache/nixcache/services/index/internal/fault"
)

// Keys lists the signer's keys, active and retired, within timeout.
// Errors are classified as classify does.
func (c *Client) Keys(ctx context.Context, timeout time.Duration) ([]*signerv1.PublicKey, error) {
	callCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, err := c.rpc.ListKeys(callCtx, &signerv1.ListKeysRequest{})
	if err != nil {
		return nil, classify(ctx, "list keys", err)
	}
	return resp.GetKeys(), nil
}

// GenerateKey has the signer make a new active key, within timeout.
// Errors are classified as classify does.
func (c *Client) GenerateKey(ctx context.Context, timeout time.Duration, name string) (*signerv1.PublicKey, error) {
	callCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, err := c.rpc.GenerateKey(callCtx, &signerv1.GenerateKeyRequest{Name: name})
	if err != nil {
		return nil, classify(ctx, "generate key", err)
	}
	return resp.GetKey(), nil
}

// RetireKey has the signer retire a key, within timeout. Errors are
// classified as classify does.
func (c *Client) RetireKey(ctx context.Context, timeout time.Duration, name string) error {
	callCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if _, err := c.rpc.RetireKey(callCtx, &signerv1.RetireKeyRequest{Name: name}); err != nil {
		return classify(ctx, "retire key", err)
	}
	return nil
}

// classify turns a signer's error into one of package fault's classes:
// the caller's context ended (ctx's error), the signer's verdict on the
// request (an invalid name, a key that exists, is missing or is the last
// active one), or else the signer unavailable.
func classify(ctx context.Context, what string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%s: %w", what, ctx.Err())
	}
	st, _ := status.FromError(err)
	switch st.Code() {
	case codes.InvalidArgument:
		return fault.Invalid("%s: %s", what, st.Message())
	case codes.AlreadyExists:
		return fault.Exists("%s: %s", what, st.Message())
	case codes.FailedPrecondition:
		return fault.Precondition("%s: %s", what, st.Message())
	case codes.NotFound:
		return fault.NotFound("%s: %s", what, st.Message())
	}
	return fault.Unavailable("%s: signer unavailable: %v", what, err)
}
