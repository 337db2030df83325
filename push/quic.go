package push

import (
	"context"
	"crypto/x509"
	"errors"
	"net"
	"sync/atomic"

	"github.com/dpgate/dpgate/push/wire"
	"github.com/quic-go/quic-go"
)

// quicConn is a session's bidirectional stream; Close ends the whole QUIC
// connection, as closing a TCP connection would.
type quicConn struct {
	*quic.Stream
	qc *quic.Conn
}

func (c quicConn) Close() error {
	c.Stream.Close()
	return c.qc.CloseWithError(0, "")
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
		s.accept.Wait(context.Background())
		if !s.admit() {
			qc.CloseWithError(quic.ApplicationErrorCode(wire.CodeOverloaded), "too many connections")
			continue
		}
		s.wg.Add(1)
		go func() { // ends when the stream is accepted and handed to a session
			defer s.wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), s.cfg.HandshakeTimeout)
			st, err := qc.AcceptStream(ctx)
			cancel()
			if err != nil {
				qc.CloseWithError(quic.ApplicationErrorCode(wire.CodeTimeout), "no stream")
				s.conns.Add(-1)
				return
			}
			var peer *x509.Certificate
			if certs := qc.ConnectionState().TLS.PeerCertificates; len(certs) > 0 {
				peer = certs[0]
			}
			s.startSession(quicConn{Stream: st, qc: qc}, nil, "quic", qc.RemoteAddr(), qc.LocalAddr(), peer)
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
