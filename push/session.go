package push

import (
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dpgate/dpgate/internal/pending"
	"github.com/dpgate/dpgate/link"
	"github.com/dpgate/dpgate/push/wire"
)

// conn is what a session runs on: a TLS connection, or a QUIC stream
// wrapped so that Close ends the QUIC connection too and its reads do
// not wait (quicConn).
type conn interface {
	io.ReadWriter
	SetReadDeadline(time.Time) error
	SetWriteDeadline(time.Time) error
	Close() error
}

// session is one agent's connection after a good HELLO. While idle it
// holds one goroutine (the reader, waiting for its socket) and no buffers
// beyond a small fixed one. A push just committed is written by the
// caller that committed it where writes never wait for the agent (wc);
// otherwise, and for what was queued before, a flusher goroutine runs
// while there are pushes to write.
type session struct {
	srv       *Server
	c         conn
	device    string
	transport string
	caps      uint16 // HELLO's capabilities
	remote    net.Addr
	since     time.Time
	id        [16]byte

	wmu sync.Mutex // serializes frame writes
	// wc is the TCP connection under c's TLS when its writes bound their
	// own waits and never wait for the agent (waitConn.Write): send arms
	// no deadline, and the caller accepting a push writes it (kickWith),
	// with no goroutine started for it. Nil otherwise (QUIC, Windows).
	wc       *waitConn
	sentUpTo atomic.Uint64
	// lastSent and lastSentAt (unix ns) are the last push written and
	// when: its ACK is timed (dpgate_push_ack_duration_seconds).
	lastSent, lastSentAt atomic.Uint64
	dirty                atomic.Bool
	needRead             atomic.Bool // the store may hold pushes the hints do not cover
	flushing             atomic.Bool
	lastSeen             atomic.Int64 // unix ns
	closed               atomic.Bool
	hintMu               sync.Mutex
	hints                []wire.Message // just-committed pushes, so the flusher can skip a store read
	fr                   *frameReader   // the reader goroutine's
	// peer is the agent's certificate with push.auth cert: the session
	// ends when the allow-list would refuse it (watchAllowList).
	peer *x509.Certificate
}

// path reads what the transport knows about the agent's path.
func (s *session) path() (link.PathStats, bool) {
	switch c := s.c.(type) {
	case quicConn:
		return link.QUICStats(c.qc), true
	case net.Conn:
		return link.TCPInfo(c)
	}
	return link.PathStats{}, false
}

// send writes one frame, bounded by WriteTimeout so a stuck agent cannot
// hold a flusher forever: by the connection itself where it can
// (wc), else by a deadline armed for the write.
func (s *session) send(frame []byte) error {
	if s.wc != nil {
		s.wmu.Lock()
		defer s.wmu.Unlock()
		_, err := s.c.Write(frame)
		return err
	}
	return s.sendBy(frame, time.Now().Add(s.srv.cfg.WriteTimeout))
}

// sendBy is send with the deadline given.
func (s *session) sendBy(frame []byte, deadline time.Time) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.c.SetWriteDeadline(deadline)
	_, err := s.c.Write(frame)
	return err
}

// kickWith is kick with a message just committed for this device: when
// it is exactly the next sequence the flusher sends it without reading the
// store (a broadcast to 19,000 devices would otherwise cost 19,000 read
// transactions). Anything out of order falls back to the store. With
// here, where the session's writes never wait for the agent (wc), the
// caller flushes unless a flusher runs: the push is written before the
// caller returns, with no goroutine started and none woken for it.
func (s *session) kickWith(m wire.Message, here bool) {
	s.hintMu.Lock()
	if len(s.hints) < 64 {
		s.hints = append(s.hints, m)
	} else {
		s.needRead.Store(true) // dropped: the store has it
	}
	s.hintMu.Unlock()
	s.wake(here)
}

// takeHints returns the hints that continue the sequence from sentUpTo.
// A gap means the store holds something the hints do not: read it.
func (s *session) takeHints() []wire.Message {
	s.hintMu.Lock()
	hints := s.hints
	s.hints = nil
	s.hintMu.Unlock()
	next := s.sentUpTo.Load() + 1
	var out []wire.Message
	for _, m := range hints {
		switch {
		case m.Seq < next: // already sent from the store
		case m.Seq == next:
			out = append(out, m)
			next++
		default:
			s.needRead.Store(true)
		}
	}
	return out
}

// kick makes the flusher read everything queued from the store.
func (s *session) kick() {
	s.needRead.Store(true)
	s.wake(false)
}

// wake starts a flusher unless one is running, which then sees the
// dirty flag. With here, where writes never wait for the agent (wc), the
// caller is the flusher: what the socket does not take, a drainer writes.
func (s *session) wake(here bool) {
	s.dirty.Store(true)
	if !s.flushing.CompareAndSwap(false, true) {
		return
	}
	s.srv.wg.Add(1)
	if here && s.wc != nil {
		s.flush()
		return
	}
	go s.flush() // exits when the queue holds nothing more to send
}

func (s *session) flush() {
	defer s.srv.wg.Done()
	for {
		s.dirty.Store(false)
	flushing:
		for !s.closed.Load() {
			msgs := s.takeHints()
			if len(msgs) == 0 {
				if !s.needRead.Swap(false) {
					break
				}
				var err error
				msgs, err = s.srv.queue.Pending(s.device, s.sentUpTo.Load(), 64)
				if err != nil {
					s.srv.log.Error("push: reading the queue", "device", s.device, "err", err)
					break
				}
				if len(msgs) == 64 {
					s.needRead.Store(true) // a full page: more may follow
				}
				if len(msgs) == 0 {
					continue // hints may have arrived meanwhile
				}
			}
			for _, m := range msgs {
				if s.wc != nil && s.wc.owing() {
					// The agent has not taken the last frame yet: the rest
					// stays queued until the drainer is done (it kicks).
					s.needRead.Store(true)
					break flushing
				}
				if err := s.send(m.Marshal()); err != nil {
					s.close()
					s.flushing.Store(false)
					return
				}
				s.sentUpTo.Store(m.Seq)
				s.lastSentAt.Store(uint64(time.Now().UnixNano()))
				s.lastSent.Store(m.Seq)
				s.srv.sent.Add(1)
			}
		}
		s.flushing.Store(false)
		// A kick between the last read and here set dirty: go again.
		if !s.dirty.Load() || s.closed.Load() || !s.flushing.CompareAndSwap(false, true) {
			return
		}
	}
}

// readLoop handles the agent's frames until the connection ends, or
// until the agent has sent nothing more and the session waits for its
// socket (errIdle; frames.go).
func (s *session) readLoop() error {
	keep := s.srv.cfg.Keepalive
	for {
		// An agent PINGs every keepalive; three missed mean it is gone.
		// (The deadline also bounds the idle wait that errIdle leads to.)
		s.c.SetReadDeadline(time.Now().Add(3 * keep))
		typ, body, err := s.fr.next(maxSmall)
		if err != nil {
			return s.readFailed(err)
		}
		s.lastSeen.Store(time.Now().UnixNano())
		switch typ {
		case wire.TypeAck:
			seq, err := wire.ParseU64(body)
			if err != nil {
				return s.fail(wire.CodeProtocol, err.Error())
			}
			if seq == s.lastSent.Load() {
				s.srv.m.ack.Observe(time.Since(time.Unix(0, int64(s.lastSentAt.Load()))).Seconds())
			}
			s.srv.acked(s.device, seq)
		case wire.TypePing:
			v, err := wire.ParseU64(body)
			if err != nil {
				return s.fail(wire.CodeProtocol, err.Error())
			}
			if err := s.send(wire.MarshalU64(wire.TypePong, v)); err != nil {
				return err
			}
		case wire.TypePong:
		case wire.TypeBye:
			if _, err := wire.ParseBye(body); err != nil {
				return s.fail(wire.CodeProtocol, err.Error())
			}
			return nil
		case wire.TypeError: // the agent gives up on the session: log it, answer nothing
			e, err := wire.ParseError(body)
			if err != nil {
				return s.fail(wire.CodeProtocol, err.Error())
			}
			s.srv.m.errorsRecv.WithLabelValues(strconv.Itoa(int(e.Code))).Inc()
			s.srv.log.Info("push: agent closed the session with an error", "device", s.device, "code", e.Code, "reason", e.Reason)
			return nil
		default:
			return s.fail(wire.CodeProtocol, fmt.Sprintf("unexpected frame type 0x%02x from an agent", typ))
		}
	}
}

// readFailed is the end of a session whose read failed with err (or
// errIdle, which is not an end).
func (s *session) readFailed(err error) error {
	switch {
	case errors.Is(err, wire.ErrTooLarge):
		return s.fail(wire.CodeFrameTooLarge, err.Error())
	case errors.Is(err, os.ErrDeadlineExceeded):
		return s.fail(wire.CodeTimeout, "no PING within 3 keepalive intervals")
	}
	return err
}

// fail sends ERROR with a reason and returns an error for the log; the
// caller closes the connection.
func (s *session) fail(code uint16, reason string) error {
	s.srv.m.errorSent(code)
	s.send((&wire.ErrorFrame{Code: code, Reason: reason}).Marshal())
	return fmt.Errorf("push: %s: %s", s.device, reason)
}

func (s *session) close() {
	if s.closed.CompareAndSwap(false, true) {
		s.c.Close()
	}
}

func newSessionID() (id [16]byte) {
	rand.Read(id[:])
	return id
}

// startSession reads HELLO, authenticates it, and runs the session on a
// new goroutine. It owns c and the connection count from here. wc is
// the connection under c's TLS, nil for QUIC (c is a quicConn); listed
// is c's entry in s.handshaking.
func (s *Server) startSession(c conn, wc *waitConn, listed pending.Conn, transport string, remote, local net.Addr, peer *x509.Certificate) {
	fr := &frameReader{r: c}
	if wc != nil && wc.nonblocking() {
		fr.w = wc
	} else if qc, ok := c.(quicConn); ok {
		fr.w = qc.rd
	}
	c.SetReadDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	typ, body, err := fr.nextWaiting(2048)
	body = slices.Clone(body) // HELLO's fields outlive the reader's buffer
	abort := func(code uint16, reason string) {
		s.m.errorSent(code)
		c.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
		c.Write((&wire.ErrorFrame{Code: code, Reason: reason}).Marshal())
		c.Close()
		s.handshakeFailed(listed)
		s.log.Debug("push: session refused", "agent", remote.String(), "code", code, "reason", reason)
	}
	switch {
	case errors.Is(err, wire.ErrTooLarge):
		abort(wire.CodeFrameTooLarge, err.Error())
		return
	case err != nil && !s.handshakeDone(listed):
		c.Close() // closed to make room: nothing to tell it
		s.handshakeFailed(listed)
		return
	case err != nil:
		abort(wire.CodeTimeout, "no HELLO: "+err.Error())
		return
	case typ != wire.TypeHello:
		abort(wire.CodeProtocol, fmt.Sprintf("first frame must be HELLO, got type 0x%02x", typ))
		return
	}
	h, err := wire.ParseHello(body)
	if err != nil {
		abort(wire.CodeProtocol, err.Error())
		return
	}
	if h.MinVersion > wire.Version || h.MaxVersion < wire.Version {
		abort(wire.CodeVersion, fmt.Sprintf("server speaks version %d, agent %d..%d", wire.Version, h.MinVersion, h.MaxVersion))
		return
	}
	if err := s.authenticate(&h, peer); err != nil {
		s.m.authFailed.WithLabelValues("hello").Inc()
		s.refusedLog.Do(1, func(n int64) {
			s.log.Warn("push: agent refused at HELLO (logged once in 10 s with refused certificates; dpgate_push_auth_failures_total counts each)",
				"agent", remote.String(), "device", h.DeviceID, "err", err, "refusals_since_last_line", n)
		})
		abort(wire.CodeAuth, err.Error())
		return
	}
	if addr, ok := s.cluster.Redirect(s.Sessions(), h.Caps&wire.CapRedirected != 0); ok {
		c.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
		c.Write((&wire.Redirect{Reason: 2, Address: addr}).Marshal())
		c.Close()
		s.handshakeFailed(listed)
		s.m.redirects.Inc()
		return
	}
	if !s.handshakeDone(listed) {
		c.Close() // closed to make room at the limit: its place is another's
		s.handshakeFailed(listed)
		return
	}
	ss := &session{srv: s, c: c, device: h.DeviceID, caps: h.Caps, transport: transport, remote: remote, since: time.Now(), id: newSessionID(), fr: fr}
	if s.cfg.Auth == AuthCert {
		ss.peer = peer
	}
	if wc != nil && wc.selfTimed() {
		ss.wc = wc
		ss.wc.onDrained = ss.kick
	}
	ss.lastSeen.Store(ss.since.UnixNano())
	nodes := s.cluster.Nodes()
	if len(nodes) == 0 {
		nodes = []string{local.String()}
	}
	welcome := &wire.Welcome{Version: wire.Version, Session: ss.id, Keepalive: uint16(s.cfg.Keepalive / time.Second), Nodes: nodes}
	// The session enters the map under the same lock Shutdown takes to set
	// draining and list sessions, so no session is missed by the DRAIN;
	// its write lock is held until WELCOME is out, so nothing (a DRAIN, a
	// PUSH) can overtake the WELCOME.
	ss.wmu.Lock()
	s.mu.Lock()
	if s.draining {
		s.mu.Unlock()
		ss.wmu.Unlock()
		abort(wire.CodeShutdown, "server is shutting down")
		return
	}
	old := s.sessions[ss.device]
	s.sessions[ss.device] = ss
	s.m.sessionsByTpt[ss.transport].Inc()
	if old != nil {
		s.m.sessionsByTpt[old.transport].Dec()
	}
	s.raw[c] = struct{}{}
	s.mu.Unlock()
	c.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
	_, err = c.Write(welcome.Marshal())
	if ss.wc != nil {
		c.SetWriteDeadline(time.Time{}) // its writes arm their own when they must wait
	}
	ss.wmu.Unlock()
	if err != nil {
		s.unregister(ss)
		c.Close()
		s.conns.Add(-1)
		return
	}
	if old != nil {
		old.send((&wire.ErrorFrame{Code: wire.CodeReplaced, Reason: "the device connected again"}).Marshal())
		old.close()
	}
	if err := s.reg.Seen(ss.device, ss.remote, &h, ss.since); err != nil {
		s.log.Error("push: device registry", "device", ss.device, "err", err)
	}
	s.cluster.SessionChanged(ss.device, true, ss.since)
	s.m.started.WithLabelValues(ss.transport).Inc()
	s.opened.Add(1)
	ss.kick() // everything still queued, from the first message
	s.wg.Add(1)
	go s.runSession(ss) // ends when the agent goes
}

// unregister removes a session from the maps if it is still the current
// one, and reports whether it was.
func (s *Server) unregister(ss *session) bool {
	s.mu.Lock()
	current := s.sessions[ss.device] == ss
	if current {
		delete(s.sessions, ss.device)
		s.m.sessionsByTpt[ss.transport].Dec()
	}
	delete(s.raw, ss.c)
	s.mu.Unlock()
	return current
}

// runSession reads the agent's frames. When the agent has sent nothing
// more, a fresh goroutine waits for it (idleSession) and this one, whose
// stack reading through crypto/tls grew to 4 KiB, ends: the waiting one
// keeps the 2 KiB it starts with, which the runtime would never shrink
// this one's back to (it shrinks a stack only when under a quarter of it
// is in use, counting 800 bytes of guard).
func (s *Server) runSession(ss *session) {
	err := ss.readLoop()
	if errors.Is(err, errIdle) {
		go s.idleSession(ss) // counted in s.wg still
		return
	}
	s.endSession(ss, err)
}

// idleSession waits for the agent's socket to become readable, then reads.
func (s *Server) idleSession(ss *session) {
	if err := ss.fr.w.await(); err != nil {
		s.endSession(ss, ss.readFailed(err))
		return
	}
	s.runSession(ss)
}

// endSession ends a session whose reading ended with err.
func (s *Server) endSession(ss *session, err error) {
	defer s.wg.Done()
	ss.close()
	if s.unregister(ss) {
		s.cluster.SessionChanged(ss.device, false, ss.since)
	}
	s.conns.Add(-1)
	s.reg.Seen(ss.device, ss.remote, nil, time.Now())
	if err != nil && !errors.Is(err, net.ErrClosed) {
		s.log.Debug("push: session ended", "device", ss.device, "err", err)
	}
}
