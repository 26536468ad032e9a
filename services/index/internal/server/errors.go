package server

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nixcache/nixcache/services/index/internal/fault"
)

// codeOf is the one table from domain error classes to status codes.
var codeOf = []struct {
	class error
	code  codes.Code
}{
	{fault.ErrInvalid, codes.InvalidArgument},
	{fault.ErrNotFound, codes.NotFound},
	{fault.ErrPrecondition, codes.FailedPrecondition},
	{fault.ErrExists, codes.AlreadyExists},
	{fault.ErrOutOfRange, codes.OutOfRange},
	{fault.ErrUnavailable, codes.Unavailable},
	{context.Canceled, codes.Canceled},
	{context.DeadlineExceeded, codes.DeadlineExceeded},
}

// toStatus turns an error into a gRPC status error. A status error from a
// stream (the client went away) keeps its code; anything unclassified is
// Internal.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	for _, c := range codeOf {
		if errors.Is(err, c.class) {
			return status.Error(c.code, err.Error())
		}
	}
	if st, ok := status.FromError(err); ok {
		return st.Err()
	}
	return status.Error(codes.Internal, err.Error())
}
