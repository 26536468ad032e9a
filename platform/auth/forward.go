package auth

import (
	"context"
	"slices"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

type forwardKey struct{}

// WithForwarded returns ctx carrying header, the Authorization value of
// an incoming request, for ForwardDialOptions to pass on to the service
// that checks it again.
func WithForwarded(ctx context.Context, header string) context.Context {
	if header == "" {
		return ctx
	}
	return context.WithValue(ctx, forwardKey{}, header)
}

// ForwardDialOptions are client interceptors that send, on calls of the
// given full method names, the credentials WithForwarded put in the
// call's context as "authorization" metadata: the server checks them with
// its own Policy, so a caller that was let through here (a gateway taken
// over) cannot do more than the credentials allow. Metadata the call sets
// itself is left alone.
func ForwardDialOptions(methods ...string) []grpc.DialOption {
	forward := func(ctx context.Context, method string) context.Context {
		header, ok := ctx.Value(forwardKey{}).(string)
		if !ok || !slices.Contains(methods, method) {
			return ctx
		}
		if md, ok := metadata.FromOutgoingContext(ctx); ok && len(md.Get(authorizationKey)) > 0 {
			return ctx
		}
		return metadata.AppendToOutgoingContext(ctx, authorizationKey, header)
	}
	return []grpc.DialOption{
		grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			return invoker(forward(ctx, method), method, req, reply, cc, opts...)
		}),
		grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			return streamer(forward(ctx, method), desc, cc, method, opts...)
		}),
	}
}
