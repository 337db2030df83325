package link

import (
	"encoding/json"
	"net"
	"time"

	"github.com/quic-go/quic-go"
)

// PathStats is the passive side of link measurement: what the transport
// of a connection already knows about its path, read without sending
// anything. From TCP_INFO for TCP (through TLS and other wrappers) and
// from quic-go's ConnectionStats for QUIC.
type PathStats struct {
	Source string        // "tcp_info" or "quic"
	RTT    time.Duration // smoothed round-trip time
	RTTVar time.Duration // its mean deviation
	MinRTT time.Duration
	Sent   uint64 // segments (TCP) or packets (QUIC) sent
	Lost   uint64 // of those, retransmitted (TCP) or declared lost (QUIC)
}

// LossRatio is Lost/Sent (0 before anything was sent).
func (p PathStats) LossRatio() float64 {
	if p.Sent == 0 {
		return 0
	}
	return float64(p.Lost) / float64(p.Sent)
}

// pathJSON is PathStats as the admin API writes it: durations in
// milliseconds, as Stats, and the loss ratio.
type pathJSON struct {
	Source string  `json:"source"`
	RTT    float64 `json:"rtt_ms"`
	RTTVar float64 `json:"rttvar_ms"`
	MinRTT float64 `json:"min_rtt_ms"`
	Sent   uint64  `json:"sent"`
	Lost   uint64  `json:"lost"`
	Loss   float64 `json:"loss"`
}

// MarshalJSON writes pathJSON.
func (p PathStats) MarshalJSON() ([]byte, error) {
	return json.Marshal(pathJSON{p.Source, millis(p.RTT), millis(p.RTTVar), millis(p.MinRTT), p.Sent, p.Lost, p.LossRatio()})
}

// UnmarshalJSON reads what MarshalJSON writes (the loss ratio follows
// from Sent and Lost).
func (p *PathStats) UnmarshalJSON(b []byte) error {
	var j pathJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*p = PathStats{j.Source, fromMillis(j.RTT), fromMillis(j.RTTVar), fromMillis(j.MinRTT), j.Sent, j.Lost}
	return nil
}

// TCPInfo reads the kernel's TCP_INFO of c, unwrapping TLS and any other
// connection that exposes NetConn. ok is false when c is not TCP at heart.
func TCPInfo(c net.Conn) (PathStats, bool) {
	for range 8 { // wrappers do not nest deeper than this
		switch v := c.(type) {
		case *net.TCPConn:
			return tcpInfo(v)
		case interface{ NetConn() net.Conn }:
			c = v.NetConn()
		default:
			return PathStats{}, false
		}
	}
	return PathStats{}, false
}

// tcpInfo reads the kernel's figures of tc's path (readTCPInfo, per
// platform).
func tcpInfo(tc *net.TCPConn) (PathStats, bool) {
	raw, err := tc.SyscallConn()
	if err != nil {
		return PathStats{}, false
	}
	var ps PathStats
	var ok bool
	if raw.Control(func(fd uintptr) { ps, ok = readTCPInfo(fd) }) != nil {
		return PathStats{}, false
	}
	return ps, ok
}

// QUICStats reads quic-go's view of a connection's path.
func QUICStats(qc *quic.Conn) PathStats { return quicPath(qc.ConnectionStats()) }

// quicPath is st in whole microseconds, as TCP_INFO gives them. quic-go
// keeps its smoothed RTT in whole microseconds and its minimum in
// nanoseconds, so on a steady path the smoothed figure came out up to a
// microsecond below the minimum (241.253 ms against 241.253443 ms).
func quicPath(st quic.ConnectionStats) PathStats {
	rtt := st.SmoothedRTT.Truncate(time.Microsecond)
	return PathStats{Source: "quic", RTT: rtt, RTTVar: st.MeanDeviation.Truncate(time.Microsecond),
		MinRTT: min(st.MinRTT.Truncate(time.Microsecond), rtt), Sent: st.PacketsSent, Lost: st.PacketsLost}
}
