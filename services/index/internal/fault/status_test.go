package fault_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nixcache/nixcache/services/index/internal/fault"
)

func TestStatus(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		code codes.Code
	}{
		{"invalid", fault.Invalid("nar_size is 0"), codes.InvalidArgument},
		{"wrapped not found", fmt.Errorf("get: %w", fault.NotFound("no such path")), codes.NotFound},
		{"precondition", fault.Precondition("p"), codes.FailedPrecondition},
		{"exists", fault.Exists("e"), codes.AlreadyExists},
		{"out of range", fault.OutOfRange("o"), codes.OutOfRange},
		{"unavailable", fault.Unavailable("u"), codes.Unavailable},
		{"canceled", fmt.Errorf("read: %w", context.Canceled), codes.Canceled},
		{"deadline", context.DeadlineExceeded, codes.DeadlineExceeded},
		{"a stream's status", status.Error(codes.Aborted, "gone"), codes.Aborted},
		{"unclassified", errors.New("disk on fire"), codes.Internal},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, ok := status.FromError(fault.Status(tc.err))
			if !ok || st.Code() != tc.code {
				t.Fatalf("Status(%v) = %v, want code %v", tc.err, st, tc.code)
			}
			if st.Message() != tc.err.Error() && tc.code != codes.Aborted {
				t.Errorf("message %q, want %q", st.Message(), tc.err.Error())
			}
		})
	}
	if fault.Status(nil) != nil {
		t.Error("Status(nil) is not nil")
	}
}
