package link

import (
	"time"

	"golang.org/x/sys/unix"
)

// HasTCPInfo says whether TCP connections' path figures come from the
// kernel on this platform (on macOS, TCP_CONNECTION_INFO: its smoothed
// RTT and variation are in milliseconds, and it has no minimum RTT).
const HasTCPInfo = true

func readTCPInfo(fd uintptr) (PathStats, bool) {
	info, err := unix.GetsockoptTCPConnectionInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_CONNECTION_INFO)
	if err != nil {
		return PathStats{}, false
	}
	ms := func(v uint32) time.Duration { return time.Duration(v) * time.Millisecond }
	return PathStats{Source: "tcp_info", RTT: ms(info.Srtt), RTTVar: ms(info.Rttvar),
		Sent: info.Txpackets, Lost: info.Txretransmitpackets}, true
}
