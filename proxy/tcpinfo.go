package proxy

import (
	"net"

	"github.com/dpgate/dpgate/link"
)

// observeTCP folds one connection's TCP_INFO into the upstream's figures.
func (u *upstream) observeTCP(c net.Conn) {
	// This is the passive side of link measurement: every relayed
	// upstream connection is sampled once, when it ends.
	ps, ok := link.TCPInfo(c)
	if !ok {
		return
	}
	rtt, rttvar, retrans := ps.RTT, ps.RTTVar, ps.Lost
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
