//go:build !linux

package grpcutil

import (
	"errors"
	"net"
)

// peerCred is Linux-only (SO_PEERCRED); elsewhere Unix sockets are not
// served.
func peerCred(*net.UnixConn) (PeerCred, error) {
	return PeerCred{}, errors.New("peer credentials need Linux (SO_PEERCRED)")
}
