//go:build !linux

package hostnar

// lowerPriority does nothing where a thread's priority is not its own.
func lowerPriority() error { return nil }
