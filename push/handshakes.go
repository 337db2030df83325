package push

import (
	"container/list"
	"net"
	"time"
)

// Connections in their handshake. A TCP connection holds a place under
// MaxConnections from its accept; until its session starts (TLS, then
// HELLO, each bounded by HandshakeTimeout) it is listed here. At the
// limit, a new connection closes the oldest one listed for over
// evictAfter and takes its place, as the admin API does with idle
// connections: otherwise connections that open and send nothing (a
// slowloris; one source address holds SourceRate x HandshakeTimeout of
// them, a local user any number) keep every agent out while they last,
// and for as long as a flood goes on. An agent's handshake takes
// milliseconds, so those over a second old are the stalled ones.

// evictAfter is how long a connection is in its handshake before a new
// one at the limit may take its place.
const evictAfter = time.Second

// handshaking is a connection listed in Server.handshaking, and in
// Server.handshakeOrder (oldest first) until it is closed to make room.
type handshaking struct {
	c       net.Conn
	since   time.Time
	evicted bool          // closed to make room: its place went to another
	el      *list.Element // in handshakeOrder
}

// handshakeBegan lists c, which admit counted, as in its handshake.
func (s *Server) handshakeBegan(c net.Conn) {
	h := &handshaking{c: c, since: time.Now()}
	s.hmu.Lock()
	h.el = s.handshakeOrder.PushBack(h)
	s.handshaking[c] = h
	s.hmu.Unlock()
}

// unlist removes c's listing and returns it (nil: never listed, as a
// QUIC connection). s.hmu is held.
func (s *Server) unlist(c net.Conn) *handshaking {
	h := s.handshaking[c]
	if h == nil {
		return nil
	}
	delete(s.handshaking, c)
	if !h.evicted {
		s.handshakeOrder.Remove(h.el)
	}
	return h
}

// handshakeFailed gives up c's place: the handshake failed, or the
// connection went elsewhere (another protocol, a redirect). c may be one
// never listed (nil, QUIC), whose place is given up all the same; one
// closed to make room gave its place away already.
func (s *Server) handshakeFailed(c net.Conn) {
	s.hmu.Lock()
	h := s.unlist(c)
	s.hmu.Unlock()
	if h == nil || !h.evicted {
		s.conns.Add(-1)
	}
}

// handshakeDone ends c's listing as its session starts, so that it can
// no longer be closed to make room; false means it was already (its
// place is another's: the caller closes it and counts nothing).
func (s *Server) handshakeDone(c net.Conn) bool {
	s.hmu.Lock()
	defer s.hmu.Unlock()
	h := s.unlist(c)
	return h == nil || !h.evicted
}

// makeRoom closes the connection longest in its handshake, if that is
// over evictAfter, and reports whether it did: its place under
// MaxConnections is then the caller's.
func (s *Server) makeRoom() bool {
	now := time.Now()
	s.hmu.Lock()
	front := s.handshakeOrder.Front()
	var h *handshaking
	if front != nil {
		h = front.Value.(*handshaking)
	}
	if h == nil || now.Sub(h.since) <= evictAfter {
		s.hmu.Unlock()
		return false
	}
	h.evicted = true
	s.handshakeOrder.Remove(front)
	s.hmu.Unlock()
	h.c.Close() // its handshake fails; handshakeFailed then counts nothing
	s.m.evicted.Inc()
	s.evictLog.Do(1, func(n int64) {
		s.log.Warn("push: connections still in their handshake after a second closed to make room at push.max_connections (logged once in 10 s; dpgate_push_handshakes_evicted_total counts each)",
			"last_from", h.c.RemoteAddr().String(), "closed_since_last_line", n)
	})
	return true
}
