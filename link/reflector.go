package link

import (
	"errors"
	"net"
	"net/netip"
	"sync/atomic"
	"time"
)

// Reflector is a stateful STAMP session-reflector (RFC 8762, 4.3): it
// answers each test packet with its own sequence number, counted per
// session-sender (address and port), which lets the sender tell loss on
// the way there from loss on the way back. Sessions idle for a minute are
// forgotten.
type Reflector struct {
	// Reflected counts the packets answered, Dropped those too short.
	Reflected, Dropped atomic.Uint64
}

type session struct {
	next uint32
	seen time.Time
}

// Serve answers on pc until it is closed. It is one goroutine: a
// reflector is bound by system calls, two per probe. Each answer carries
// the TTL (IPv4) or hop limit (IPv6) the probe arrived with (RFC 8762
// 4.3.1), which tells the sender how many hops the path has.
func (r *Reflector) Serve(pc *net.UDPConn) error {
	sessions := map[netip.AddrPort]*session{}
	in := make([]byte, 1500)
	oob := make([]byte, 64)
	out := make([]byte, PacketSize)
	lastPrune := time.Now()
	receiveTTL(pc)
	for {
		n, oobn, _, from, err := pc.ReadMsgUDPAddrPort(in, oob)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		now := time.Now()
		p, err := ParseSender(in[:n])
		if err != nil {
			r.Dropped.Add(1)
			continue
		}
		s := sessions[from]
		if s == nil {
			s = &session{}
			sessions[from] = s
		}
		s.seen = now
		ref := Reflected{Seq: s.next, Received: now, SenderSeq: p.Seq, SenderTime: p.Timestamp,
			SenderErrorEst: p.ErrorEst, ErrorEst: errorEstimate, SenderTTL: ttlOf(oob[:oobn])}
		s.next++
		ref.Timestamp = time.Now()
		pc.WriteToUDPAddrPort(ref.Marshal(out), from)
		r.Reflected.Add(1)
		if now.Sub(lastPrune) > 10*time.Second {
			for a, s := range sessions {
				if now.Sub(s.seen) > time.Minute {
					delete(sessions, a)
				}
			}
			lastPrune = now
		}
	}
}
