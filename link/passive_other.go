//go:build !linux && !darwin

package link

// HasTCPInfo says whether TCP connections' path figures come from the
// kernel (TCP_INFO) on this platform; elsewhere they have none and only
// QUIC sessions report a path.
const HasTCPInfo = false

func readTCPInfo(uintptr) (PathStats, bool) { return PathStats{}, false }
