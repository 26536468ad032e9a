// Package fault classifies the index's domain errors by what went wrong
// (the caller's input, a missing thing, a conflict...) so that the service
// boundary can map each class to a status code in one place: Status.
//
// The class never appears in the message: fault.Invalid("nar_size is 0")
// reads "nar_size is 0", and errors.Is(err, fault.ErrInvalid) is true.
package fault

import (
	"errors"
	"fmt"
)

// The classes. Test with errors.Is.
var (
	// ErrInvalid: the caller's input is wrong and will stay wrong.
	ErrInvalid = errors.New("invalid argument")
	// ErrNotFound: the thing asked for is not there.
	ErrNotFound = errors.New("not found")
	// ErrPrecondition: the request is valid but needs something done first.
	ErrPrecondition = errors.New("failed precondition")
	// ErrExists: the request conflicts with what is already stored.
	ErrExists = errors.New("already exists")
	// ErrOutOfRange: a byte range beyond the end of the data.
	ErrOutOfRange = errors.New("out of range")
	// ErrUnavailable: a dependency is down; retrying later may work.
	ErrUnavailable = errors.New("unavailable")
)

// classified is an error of a class with its own message.
type classified struct {
	class error
	err   error
}

func (e *classified) Error() string        { return e.err.Error() }
func (e *classified) Unwrap() error        { return e.err }
func (e *classified) Is(target error) bool { return target == e.class }

func newf(class error, format string, a ...any) error {
	return &classified{class: class, err: fmt.Errorf(format, a...)}
}

// Invalid returns an ErrInvalid error formatted as fmt.Errorf does (%w works).
func Invalid(format string, a ...any) error { return newf(ErrInvalid, format, a...) }

// NotFound returns an ErrNotFound error.
func NotFound(format string, a ...any) error { return newf(ErrNotFound, format, a...) }

// Precondition returns an ErrPrecondition error.
func Precondition(format string, a ...any) error { return newf(ErrPrecondition, format, a...) }

// Exists returns an ErrExists error.
func Exists(format string, a ...any) error { return newf(ErrExists, format, a...) }

// OutOfRange returns an ErrOutOfRange error.
func OutOfRange(format string, a ...any) error { return newf(ErrOutOfRange, format, a...) }

// Unavailable returns an ErrUnavailable error.
func Unavailable(format string, a ...any) error { return newf(ErrUnavailable, format, a...) }
