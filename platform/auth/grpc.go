package auth

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// authorizationKey is the gRPC metadata key of the credentials, as grpcurl
// (-H 'authorization: Bearer <token>') and grpc-gateway send them.
const authorizationKey = "authorization"

// Rules maps full gRPC method names ("/nixcache.index.v1.AdminService/GetStats")
// to the scope a call needs. Methods not in the table are not checked:
// service-to-service RPCs are protected by the transport (a Unix socket
// only the services' user reaches, or mutual TLS).
type Rules map[string]Scope

// ServiceRules returns rules for every method of the service sd: each
// needs scope def, except those named (by short name, e.g. "GetStats") in
// except, which need the scope given there. An except entry naming no
// method of sd is an error, so a typo cannot leave a method with the
// default by mistake.
func ServiceRules(sd *grpc.ServiceDesc, def Scope, except map[string]Scope) (Rules, error) {
	rules := Rules{}
	seen := map[string]bool{}
	add := func(name string) {
		need := def
		if s, ok := except[name]; ok {
			need = s
			seen[name] = true
		}
		rules["/"+sd.ServiceName+"/"+name] = need
	}
	for _, m := range sd.Methods {
		add(m.MethodName)
	}
	for _, s := range sd.Streams {
		add(s.StreamName)
	}
	var unknown []string
	for name := range except {
		if !seen[name] {
			unknown = append(unknown, name)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return nil, fmt.Errorf("auth rules for %s: no methods %q", sd.ServiceName, unknown)
	}
	return rules, nil
}

// ServerOptions returns the unary and stream interceptors enforcing rules
// under p, for grpcutil.NewServer.
func (p Policy) ServerOptions(rules Rules) []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(p.UnaryServerInterceptor(rules)),
		grpc.ChainStreamInterceptor(p.StreamServerInterceptor(rules)),
	}
}

// UnaryServerInterceptor refuses calls to a method in rules without the
// scope it needs: Unauthenticated without valid credentials,
// PermissionDenied with a token lacking the scope. Calls it lets through
// carry the caller's Identity (IdentityFrom).
func (p Policy) UnaryServerInterceptor(rules Rules) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		ctx, err := p.check(ctx, rules, info.FullMethod)
		if err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
}

// StreamServerInterceptor is UnaryServerInterceptor for streaming methods.
func (p Policy) StreamServerInterceptor(rules Rules) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ctx, err := p.check(ss.Context(), rules, info.FullMethod)
		if err != nil {
			return err
		}
		return handler(srv, identityStream{ServerStream: ss, ctx: ctx})
	}
}

type identityStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s identityStream) Context() context.Context { return s.ctx }

// check authorizes a call of method; it returns ctx with the identity, or
// a status error.
func (p Policy) check(ctx context.Context, rules Rules, method string) (context.Context, error) {
	need, ok := rules[method]
	if !ok {
		return ctx, nil
	}
	var header string
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		switch vals := md.Get(authorizationKey); len(vals) {
		case 0:
		case 1:
			header = vals[0]
		default:
			return ctx, status.Error(codes.Unauthenticated, "more than one authorization metadata value")
		}
	}
	id, err := p.AuthorizeHeader(ctx, header, need)
	if err != nil {
		return ctx, toStatus(err)
	}
	return WithIdentity(ctx, id), nil
}

// toStatus maps the errors of Authorize to gRPC status codes.
func toStatus(err error) error {
	switch {
	case errors.Is(err, ErrForbidden):
		return status.Error(codes.PermissionDenied, err.Error())
	case errors.Is(err, ErrUnauthenticated):
		return status.Error(codes.Unauthenticated, err.Error())
	case errors.Is(err, ErrUnavailable):
		return status.Error(codes.Unavailable, err.Error())
	default:
		return status.Error(codes.Internal, "internal error")
	}
}
