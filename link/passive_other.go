//go:build !linux && !darwin

package link

import "net"

// HasTCPInfo says whether TCP connections' path figures come from the
// kernel (TCP_INFO) on this platform; elsewhere they have none and only
// QUIC sessions report a path.
const HasTCPInfo = false

func tcpInfo(*net.TCPConn) (PathStats, bool) { return PathStats{}, false }
