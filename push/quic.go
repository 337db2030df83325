package push

import (
	"context"
	"crypto/x509"
	"errors"
	"net"

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
	tr := &quic.Transport{Conn: pc}
	ln, err := tr.Listen(s.tls, &quic.Config{
		HandshakeIdleTimeout:  s.cfg.HandshakeTimeout,
		MaxIdleTimeout:        3 * s.cfg.Keepalive, // agents PING every keepalive
		MaxIncomingStreams:    1,
		MaxIncomingUniStreams: -1,
	})
	if err != nil {
		return err
	}
	if !s.addListener(func() { ln.Close(); tr.Close() }) {
		ln.Close()
		tr.Close()
		return nil
	}
	for {
		qc, err := ln.Accept(context.Background())
		if err != nil {
			if s.stopped() || errors.Is(err, quic.ErrServerClosed) || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		if !s.fromSource(qc.RemoteAddr()) {
			qc.CloseWithError(quic.ApplicationErrorCode(CodeOverloaded), "too many connections from this source")
			continue
		}
		s.accept.Wait(context.Background())
		if !s.admit() {
			qc.CloseWithError(quic.ApplicationErrorCode(CodeOverloaded), "too many connections")
			continue
		}
		s.wg.Add(1)
		go func() { // ends when the stream is accepted and handed to a session
			defer s.wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), s.cfg.HandshakeTimeout)
			st, err := qc.AcceptStream(ctx)
			cancel()
			if err != nil {
				qc.CloseWithError(quic.ApplicationErrorCode(CodeTimeout), "no stream")
				s.conns.Add(-1)
				return
			}
			var peer *x509.Certificate
			if certs := qc.ConnectionState().TLS.PeerCertificates; len(certs) > 0 {
				peer = certs[0]
			}
			s.startSession(quicConn{Stream: st, qc: qc}, "quic", qc.RemoteAddr(), qc.LocalAddr(), peer)
		}()
	}
}
