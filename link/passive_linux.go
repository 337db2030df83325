package link

import (
	"time"

	"golang.org/x/sys/unix"
)

// HasTCPInfo says whether TCP connections' path figures come from the
// kernel (TCP_INFO) on this platform; elsewhere they have none and only
// QUIC sessions report a path.
const HasTCPInfo = true

func readTCPInfo(fd uintptr) (PathStats, bool) {
	info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		return PathStats{}, false
	}
	us := func(v uint32) time.Duration { return time.Duration(v) * time.Microsecond }
	return PathStats{Source: "tcp_info", RTT: us(info.Rtt), RTTVar: us(info.Rttvar), MinRTT: us(info.Min_rtt),
		Sent: uint64(info.Segs_out), Lost: uint64(info.Total_retrans)}, true
}
