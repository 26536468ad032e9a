//go:build !linux

package narstore

import (
	"errors"
	"os"
)

var (
	errOpenForWriting = errors.New("file open for writing")
	errNoLeases       = errors.New("file leases are Linux only: no spooled uploads here")
)

func takeReadLease(*os.File) error  { return errNoLeases }
func checkReadLease(*os.File) error { return errNoLeases }
func releaseLease(*os.File) error   { return errNoLeases }
