package diskio

import (
	"os"

	"golang.org/x/sys/unix"
)

// StartWriteback asks the kernel to start writing n bytes of f at off to
// disk, without waiting (sync_file_range(2) SYNC_FILE_RANGE_WRITE): the
// disk works while the upload streams in. It is no durability promise;
// the file is fsynced before it is committed, as ever, so errors are
// ignored.
func StartWriteback(f *os.File, off, n uint64) {
	rc, err := f.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		_ = unix.SyncFileRange(int(fd), int64(off), int64(n), unix.SYNC_FILE_RANGE_WRITE)
	})
}
