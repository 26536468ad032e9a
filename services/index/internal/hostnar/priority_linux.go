package hostnar

import "syscall"

// lowerPriority gives the calling thread (locked to its goroutine) the
// lowest CPU priority, nice 19: on Linux a thread's nice value is its own.
func lowerPriority() error {
	return syscall.Setpriority(syscall.PRIO_PROCESS, syscall.Gettid(), 19)
}
