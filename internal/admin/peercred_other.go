//go:build !linux

package admin

import "net"

// peerAllowed: without SO_PEERCRED the socket file's mode (0600) is the
// only check.
func peerAllowed(*net.UnixConn) bool { return true }
