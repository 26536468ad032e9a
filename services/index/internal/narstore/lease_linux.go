package narstore

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// errOpenForWriting: a read lease was refused because the file is open
// for writing somewhere.
var errOpenForWriting = errors.New("file open for writing")

// takeReadLease takes a read lease on f (fcntl F_SETLEASE F_RDLCK), which
// the kernel grants only while no descriptor of the file is open for
// writing, in any process.
func takeReadLease(f *os.File) error {
	err := leaseFcntl(f, unix.F_SETLEASE, unix.F_RDLCK, nil)
	if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EBUSY) {
		return errOpenForWriting
	}
	return err
}

// checkReadLease fails unless f still holds its read lease: an open for
// writing since takeReadLease has broken it.
func checkReadLease(f *os.File) error {
	var held int
	if err := leaseFcntl(f, unix.F_GETLEASE, 0, &held); err != nil {
		return err
	}
	if held != unix.F_RDLCK {
		return errOpenForWriting
	}
	return nil
}

// releaseLease gives f's lease back.
func releaseLease(f *os.File) error {
	return leaseFcntl(f, unix.F_SETLEASE, unix.F_UNLCK, nil)
}

func leaseFcntl(f *os.File, cmd, arg int, out *int) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) {
		var v int
		v, ferr = unix.FcntlInt(fd, cmd, arg)
		if out != nil {
			*out = v
		}
	}); err != nil {
		return err
	}
	if ferr != nil {
		return fmt.Errorf("fcntl lease: %w", ferr)
	}
	return nil
}
