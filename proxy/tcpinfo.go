package proxy

import (
	"net"
	"time"

	"golang.org/x/sys/unix"
)

// tcpSample reads the kernel's view of a TCP connection (TCP_INFO):
// smoothed round-trip time, its variation, and retransmitted segments.
// This is the passive side of link measurement: every relayed upstream
// connection is sampled once, when it ends.
func tcpSample(c net.Conn) (rtt, rttvar time.Duration, retrans uint32, ok bool) {
	tc, isTCP := c.(*net.TCPConn)
	if !isTCP {
		return 0, 0, 0, false
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return 0, 0, 0, false
	}
	var info *unix.TCPInfo
	raw.Control(func(fd uintptr) {
		info, err = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	})
	if err != nil || info == nil {
		return 0, 0, 0, false
	}
	return time.Duration(info.Rtt) * time.Microsecond, time.Duration(info.Rttvar) * time.Microsecond, info.Total_retrans, true
}

// observeTCP folds one connection's TCP_INFO into the upstream's figures.
func (u *upstream) observeTCP(c net.Conn) {
	rtt, rttvar, retrans, ok := tcpSample(c)
	if !ok {
		return
	}
	u.tcpSamples.Add(1)
	u.tcpRetrans.Add(uint64(retrans))
	// EWMA with weight 1/8, as TCP smooths its own RTT.
	for {
		old := u.tcpRTT.Load()
		next := int64(rtt)
		if old != 0 {
			next = old + (int64(rtt)-old)/8
		}
		if u.tcpRTT.CompareAndSwap(old, next) {
			break
		}
	}
	u.tcpRTTVar.Store(int64(rttvar))
}
