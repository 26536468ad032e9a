//go:build !linux

package httpapi

import "os"

// openBeneath reports ok false where there is no openat2(2): os.Root
// opens the file.
func openBeneath(*os.File, string) (*os.File, bool, error) { return nil, false, nil }
