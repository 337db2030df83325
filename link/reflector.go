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
// forgotten. At most MaxSessions are kept: a flood from many sources
// (every port of 127.0.0.0/8 for a local user, spoofed ones on a LAN)
// would otherwise hold a session each for a minute, some 170 bytes each.
// Past that bound, sessions idle for SessionIdleWhenFull go first; a
// packet from a source still without one is answered statelessly (4.3:
// the reflector's number is the sender's, so its sender cannot tell
// which way a probe was lost).
type Reflector struct {
	// Reflected counts the packets answered, Stateless those of them
	// answered without a session, Dropped the packets too short.
	Reflected, Stateless, Dropped atomic.Uint64
	// MaxSessions bounds the senders numbered at once; 0 is
	// DefaultMaxSessions. Set before Serve.
	MaxSessions int

	sessions atomic.Int64 // held now, for Sessions
}

// DefaultMaxSessions is Reflector.MaxSessions' default: far more senders
// than probe one gateway (each node of a cluster, a central monitor).
const DefaultMaxSessions = 4096

// Session lifetimes: idle this long, a session is forgotten; with the
// sessions full, idle SessionIdleWhenFull (a sender probes every 100 ms
// by default). A forgotten sender that comes back starts a new session,
// numbered from 0, which its prober takes as a reflector restarted.
const (
	SessionIdle         = time.Minute
	SessionIdleWhenFull = 5 * time.Second
)

// Sessions is the number of senders the reflector numbers now.
func (r *Reflector) Sessions() int { return int(r.sessions.Load()) }

type session struct {
	next uint32
	seen time.Time
}

// Serve answers on pc until it is closed. It is one goroutine: a
// reflector is bound by system calls, two per probe. Each answer carries
// the TTL (IPv4) or hop limit (IPv6) the probe arrived with (RFC 8762
// 4.3.1), which tells the sender how many hops the path has.
func (r *Reflector) Serve(pc *net.UDPConn) error {
	limit := r.MaxSessions
	if limit <= 0 {
		limit = DefaultMaxSessions
	}
	sessions := map[netip.AddrPort]*session{}
	prune := func(now time.Time, idle time.Duration) {
		for a, s := range sessions {
			if now.Sub(s.seen) > idle {
				delete(sessions, a)
			}
		}
		r.sessions.Store(int64(len(sessions)))
	}
	in := make([]byte, 1500)
	oob := make([]byte, 64)
	out := make([]byte, PacketSize)
	lastPrune, lastFullPrune := time.Now(), time.Time{}
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
		if s == nil && len(sessions) >= limit && now.Sub(lastFullPrune) >= time.Second {
			prune(now, SessionIdleWhenFull) // at most once a second: a walk of them all
			lastFullPrune = now
		}
		if s == nil && len(sessions) < limit {
			s = &session{}
			sessions[from] = s
			r.sessions.Store(int64(len(sessions)))
		}
		ref := Reflected{Seq: p.Seq, Received: now, SenderSeq: p.Seq, SenderTime: p.Timestamp,
			SenderErrorEst: p.ErrorEst, ErrorEst: errorEstimate, SenderTTL: ttlOf(oob[:oobn])}
		if s != nil {
			s.seen = now
			ref.Seq = s.next
			s.next++
		} else {
			r.Stateless.Add(1)
		}
		ref.Timestamp = time.Now()
		pc.WriteToUDPAddrPort(ref.Marshal(out), from)
		r.Reflected.Add(1)
		if now.Sub(lastPrune) > 10*time.Second {
			prune(now, SessionIdle)
			lastPrune = now
		}
	}
}
