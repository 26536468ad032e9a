package fault

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// codeOf is the one table from the classes to gRPC status codes, used by
// every service of the index at its boundary.
var codeOf = []struct {
	class error
	code  codes.Code
}{
	{ErrInvalid, codes.InvalidArgument},
	{ErrNotFound, codes.NotFound},
	{ErrPrecondition, codes.FailedPrecondition},
	{ErrExists, codes.AlreadyExists},
	{ErrOutOfRange, codes.OutOfRange},
	{ErrUnavailable, codes.Unavailable},
	{context.Canceled, codes.Canceled},
	{context.DeadlineExceeded, codes.DeadlineExceeded},
}

// Status turns an error into a gRPC status error. A status error from a
// stream (the client went away) keeps its code; anything unclassified is
// Internal.
func Status(err error) error {
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
