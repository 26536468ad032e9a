// Package program is the shape every nixcache program shares: a main that
// only calls os.Exit(run(args, ...)), subcommands that return an error,
// flags that take their environment twins (platform/envflag), and one
// exit code for each outcome:
//
//	0  done, or -h printed the manual
//	1  the program failed
//	2  bad usage: a flag, argument or setting it cannot run with
package program

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os/signal"
	"syscall"

	"github.com/nixcache/nixcache/platform/envflag"
	"github.com/nixcache/nixcache/platform/logging"
)

// The exit codes.
const (
	ExitOK      = 0
	ExitFailure = 1
	ExitUsage   = 2
)

// usageError is bad usage: exit code 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// UsageError marks err as bad usage, so that Exit returns 2; nil stays nil.
func UsageError(err error) error {
	if err == nil {
		return nil
	}
	return usageError{err}
}

// Usagef is a new error of bad usage.
func Usagef(format string, a ...any) error {
	return usageError{fmt.Errorf(format, a...)}
}

// FlagSet returns an empty flag set named name that prints its errors and
// its manual to stderr.
func FlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// Parse sets the flags of fs from their environment twins, then from args
// (envflag.Parse), and refuses arguments that are not flags. It returns
// flag.ErrHelp after -h (the manual is printed), a usage error on anything
// else wrong.
func Parse(fs *flag.FlagSet, args []string) error {
	if err := envflag.Parse(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return UsageError(err)
	}
	if fs.NArg() > 0 {
		return Usagef("unexpected argument %q", fs.Arg(0))
	}
	return nil
}

// Logger is the program's one logger (logging.New), writing to w; a bad
// format or level is a usage error.
func Logger(w io.Writer, format, level string) (*slog.Logger, error) {
	log, err := logging.New(w, format, level)
	return log, UsageError(err)
}

// SignalContext returns a context that ends on SIGINT or SIGTERM, and the
// function that stops listening for them.
func SignalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
}

// Exit returns the exit code of err, what a program or subcommand named
// name returned, after printing err to stderr as "name: err": 0 for nil
// and flag.ErrHelp, 2 for a usage error, 1 for any other.
func Exit(name string, err error, stderr io.Writer) int {
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return ExitOK
	}
	fmt.Fprintf(stderr, "%s: %v\n", name, err)
	if errors.As(err, new(usageError)) {
		return ExitUsage
	}
	return ExitFailure
}
