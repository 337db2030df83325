package push

import (
	"context"
	"crypto/x509"
	"errors"
	"net"
	"sync/atomic"
	"time"

	"github.com/dpgate/dpgate/push/wire"
	"github.com/quic-go/quic-go"
)

// quicConn is a session's bidirectional stream; Close ends the whole QUIC
// connection, as closing a TCP connection would. Its reads do not wait
// (quicReader).
type quicConn struct {
	*quic.Stream
	qc *quic.Conn
	rd *quicReader
}

func newQUICConn(st *quic.Stream, qc *quic.Conn) quicConn {
	return quicConn{Stream: st, qc: qc, rd: &quicReader{st: st}}
}

func (c quicConn) Close() error {
	c.Stream.Close()
	return c.qc.CloseWithError(0, "")
}

func (c quicConn) Read(p []byte) (int, error) { return c.rd.Read(p) }

// SetReadDeadline sets the deadline of the session's waits (await).
func (c quicConn) SetReadDeadline(t time.Time) error {
	c.rd.deadline = t
	return nil
}

// quicReader reads a session's QUIC stream so that the session waits for
// its agent on a fresh goroutine, as a TLS session does (waitConn): a
// goroutine parked in Stream.Read after handling frames kept the stack
// that handling grew (docs/BENCHMARKS.md, "QUIC: an idle session's
// stack"). quic-go's stream has no read that returns what it holds
// without waiting (with a deadline already past, Read and Peek fail
// before they look, v0.65.0), so Read hands out only what await read and
// then answers errWouldBlock: the frame reader answers errIdle, and the
// session calls await, the one place it blocks, on a fresh goroutine;
// await returns at once when the stream already holds bytes. Only the
// session's reading goroutine uses it, one at a time.
type quicReader struct {
	st       *quic.Stream
	deadline time.Time // the session's read deadline, for await

	// what await read, for the next Reads, and the error that came with
	// it; room for a HELLO with a token in one or two reads, and many
	// ACKs and PINGs
	pend    [128]byte
	pos, n  int
	pendErr error
}

func (r *quicReader) Read(p []byte) (int, error) {
	if r.pos < r.n {
		n := copy(p, r.pend[r.pos:r.n])
		r.pos += n
		return n, nil
	}
	if err := r.pendErr; err != nil {
		r.pendErr = nil
		return 0, err
	}
	return 0, errWouldBlock
}

// await blocks until the stream has bytes or fails (the session's
// deadline, the connection's end), and reads what it has (at most
// len(pend)) for the next Reads.
func (r *quicReader) await() error {
	r.pos, r.n = 0, 0
	r.st.SetReadDeadline(r.deadline)
	n, err := r.st.Read(r.pend[:])
	if n == 0 {
		return err
	}
	r.n, r.pendErr = n, err
	return nil
}

// ServeQUIC serves the push protocol over QUIC on pc (ALPN
// "dpgate-push/1", one bidirectional stream per connection) until
// Shutdown or Close. Clients may migrate: a session survives a change of
// the agent's UDP address. pc is not closed.
func (s *Server) ServeQUIC(pc net.PacketConn) error {
	// Address validation (RFC 9000 section 8.1.2) under load: while
	// fewer than QUICRetryAbove handshakes from unvalidated addresses are
	// in progress, an Initial is answered with the handshake (at most 3x
	// its bytes, as the RFC allows); above that, with a Retry only (one
	// small packet, no state kept), so a flood of spoofed Initials
	// neither amplifies nor fills memory. An agent that reconnects shows
	// the token of its last connection (NEW_TOKEN) and skips the Retry.
	tr := &quic.Transport{
		Conn: pc,
		VerifySourceAddress: func(net.Addr) bool {
			return s.cfg.QUICRetryAbove < 0 || s.unvalidated.Load() >= int64(s.cfg.QUICRetryAbove)
		},
		ConnContext: func(ctx context.Context, info *quic.ClientInfo) (context.Context, error) {
			if info.AddrVerified {
				return ctx, nil
			}
			s.unvalidated.Add(1)
			done := new(atomic.Bool)
			context.AfterFunc(ctx, func() { s.handshakeOver(done) }) // failed or closed
			return context.WithValue(ctx, handshakeKey{}, done), nil
		},
	}
	if len(s.cfg.QUICResetKey) > 0 {
		var k quic.StatelessResetKey
		copy(k[:], s.cfg.QUICResetKey)
		tr.StatelessResetKey = &k
		// quic-go answers with a reset only a packet longer than 42
		// bytes (so that two endpoints cannot reset each other in a
		// loop). With its default 4-byte connection IDs even an agent's
		// PING frame can come in a packet that short: 1 restart in 3
		// went unanswered for 50 s (TestQUICAgentBackAfterKill9). With
		// 16 bytes, 12 more in each of the agent's packets, its PING
		// (every push.keepalive) always is, and often its QUIC
		// keepalive (every 10 s) already: 6 runs in 6 reconnected, in
		// 10.5 or 30.6 s.
		tr.ConnectionIDLength = 16
	}
	ln, err := tr.Listen(s.tls, &quic.Config{
		HandshakeIdleTimeout:  s.cfg.HandshakeTimeout,
		MaxIdleTimeout:        3 * s.cfg.Keepalive, // agents PING every keepalive
		MaxIncomingStreams:    1,
		MaxIncomingUniStreams: -1,
	})
	if err != nil {
		return err
	}
	// Stopping to accept closes the listener alone: sessions go on, to
	// be drained; Shutdown and Close close the transport after them.
	s.mu.Lock()
	s.transports = append(s.transports, tr)
	s.mu.Unlock()
	if !s.addListener(func() { ln.Close() }) {
		ln.Close()
		s.closeTransports()
		return nil
	}
	defer s.wg.Done() // addListener counted this loop
	for {
		qc, err := ln.Accept(context.Background())
		if err != nil {
			if s.stopped() || errors.Is(err, quic.ErrServerClosed) || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		if done, ok := qc.Context().Value(handshakeKey{}).(*atomic.Bool); ok {
			s.handshakeOver(done) // completed: the address is validated now
		}
		if !s.fromSource(qc.RemoteAddr()) {
			qc.CloseWithError(quic.ApplicationErrorCode(wire.CodeOverloaded), "too many connections from this source")
			continue
		}
		s.accept.Wait(s.stop) // ends early when the server stops accepting, as over TCP
		if !s.admit(s.makeRoom) {
			qc.CloseWithError(quic.ApplicationErrorCode(wire.CodeOverloaded), "too many connections")
			continue
		}
		listed := &quicPending{qc}
		s.handshaking.Add(listed)
		s.wg.Add(1)
		go func() { // ends when the stream is accepted and handed to a session
			defer s.wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), s.cfg.HandshakeTimeout)
			st, err := qc.AcceptStream(ctx)
			cancel()
			if err != nil {
				qc.CloseWithError(quic.ApplicationErrorCode(wire.CodeTimeout), "no stream")
				s.handshakeFailed(listed)
				return
			}
			var peer *x509.Certificate
			if certs := qc.ConnectionState().TLS.PeerCertificates; len(certs) > 0 {
				peer = certs[0]
			}
			s.startSession(newQUICConn(st, qc), nil, listed, "quic", qc.RemoteAddr(), qc.LocalAddr(), peer)
		}()
	}
}

// handshakeKey marks a QUIC connection whose handshake began from an
// unvalidated address; its value is set once the handshake is over.
type handshakeKey struct{}

// handshakeOver counts a handshake from an unvalidated address as over,
// once whichever comes first (completed, failed, closed) says so.
func (s *Server) handshakeOver(done *atomic.Bool) {
	if !done.Swap(true) {
		s.unvalidated.Add(-1)
	}
}

// QUICHandshakes is the number of QUIC handshakes from unvalidated
// addresses in progress.
func (s *Server) QUICHandshakes() int64 { return s.unvalidated.Load() }
