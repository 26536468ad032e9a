package httpapi

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// openBeneath opens rel, a clean relative path, read-only under the
// directory dir in one openat2(2) call that cannot leave dir: no "..",
// no absolute path, no symbolic link on the way (the index makes none
// under nars/). It reports ok false where the kernel has no openat2, or
// a filter refuses it: then os.Root opens it.
func openBeneath(dir *os.File, rel string) (f *os.File, ok bool, err error) {
	how := &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_CLOEXEC | unix.O_NOCTTY,
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
			return nil, false, nil
		}
		return nil, true, &os.PathError{Op: "openat2", Path: rel, Err: err}
	}
}
