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
	u.tcpSamples.Add(1)
	u.tcpRetrans.Add(ps.Lost)
	smooth(&u.tcpRTT, ps.RTT)
	u.tcpRTTVar.Store(int64(ps.RTTVar))
}
