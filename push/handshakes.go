package push

import (
	"net"

	"github.com/quic-go/quic-go"

	"github.com/dpgate/dpgate/internal/pending"
	"github.com/dpgate/dpgate/push/wire"
)

// Connections in their handshake. A TCP connection holds a place under
// MaxConnections from its accept, a QUIC one from the end of its
// handshake; until its session starts (TLS or the QUIC stream, then
// HELLO, each bounded by HandshakeTimeout) it is listed in
// Server.handshaking. At the limit, a new connection closes the oldest
// listed for over pending.EvictAfter and takes its place, as the admin
// API does with idle connections (package pending says why).

// quicPending is a QUIC connection in Server.handshaking: counted once
// its handshake is over, until its stream and HELLO.
type quicPending struct{ qc *quic.Conn }

func (q *quicPending) Close() error {
	return q.qc.CloseWithError(quic.ApplicationErrorCode(wire.CodeTimeout), "closed to make room: no stream and HELLO within a second")
}

func (q *quicPending) RemoteAddr() net.Addr { return q.qc.RemoteAddr() }

// handshakeFailed gives up c's place: the handshake failed, or the
// connection went elsewhere (another protocol, a redirect). c may be one
// never listed (nil, QUIC), whose place is given up all the same; one
// closed to make room gave its place away already.
func (s *Server) handshakeFailed(c pending.Conn) {
	if !s.handshaking.Remove(c) {
		s.conns.Add(-1)
	}
}

// handshakeDone ends c's listing as its session starts (or as its
// handshake failed, to tell a failure from a close to make room), so
// that it can no longer be closed to make room; false means it was
// already (its place is another's: the caller gives it up with
// handshakeFailed, which then counts nothing).
func (s *Server) handshakeDone(c pending.Conn) bool { return s.handshaking.Settle(c) }

// makeRoom closes the connection longest in its handshake, if that is
// over pending.EvictAfter, and reports whether it did: its place under
// MaxConnections is then the caller's.
func (s *Server) makeRoom() bool {
	c := s.handshaking.Evict(pending.EvictAfter)
	if c == nil {
		return false
	}
	s.m.evicted.Inc()
	s.evictLog.Do(1, func(n int64) {
		s.log.Warn("push: connections still in their handshake after a second closed to make room at push.max_connections (logged once in 10 s; dpgate_push_handshakes_evicted_total counts each)",
			"last_from", c.RemoteAddr().String(), "closed_since_last_line", n)
	})
	return true
}
