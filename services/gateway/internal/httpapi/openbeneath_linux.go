package httpapi

import (
	"errors"
	"os"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// noOpenat2 is set once openat2 turned out to be missing, or refused by
// a seccomp filter: os.Root opens every file from then on.
var noOpenat2 atomic.Bool

// openBeneath opens rel, a clean relative path, read-only under the
// directory dir in one openat2(2) call that cannot leave dir and
// follows no symbolic link (the index makes none under nars/). It
// reports ok false when it could not decide, and os.Root must open the
// file: where there is no openat2, and for a name with a symbolic link
// or a mount point on the way, which os.Root follows while it stays
// inside the directory.
func openBeneath(dir *os.File, rel string) (f *os.File, ok bool, err error) {
	if noOpenat2.Load() {
		return nil, false, nil
	}
	how := &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_CLOEXEC | unix.O_NOCTTY | unix.O_LARGEFILE,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	}
	for {
		fd, err := unix.Openat2(int(dir.Fd()), rel, how)
		switch {
		case err == nil:
			return os.NewFile(uintptr(fd), rel), true, nil
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.ENOSYS), errors.Is(err, unix.EPERM):
			noOpenat2.Store(true)
			return nil, false, nil
		case errors.Is(err, unix.ELOOP), errors.Is(err, unix.EXDEV):
			return nil, false, nil
		}
		return nil, true, &os.PathError{Op: "openat2", Path: rel, Err: err}
	}
}
