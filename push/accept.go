package push

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"slices"
	"time"

	"github.com/dpgate/dpgate/push/wire"
	"github.com/dpgate/dpgate/tlsconf"
)

// Serve accepts TLS-over-TCP agents on ln until Shutdown or Close.
func (s *Server) Serve(ln net.Listener) error {
	if !s.addListener(func() { ln.Close() }) {
		ln.Close()
		return nil
	}
	defer s.wg.Done() // addListener counted this loop
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.stopped() {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			s.acceptLog.Do(1, func(n int64) {
				s.log.Warn("push: accept failed (logged once in 10 s)", "err", err, "failures_since_last_line", n)
			})
			time.Sleep(50 * time.Millisecond) // e.g. out of descriptors: do not spin
			continue
		}
		if !s.fromSource(c.RemoteAddr()) {
			c.Close() // before any TLS work
			continue
		}
		// Smooth reconnect storms. The wait ends early when the server
		// stops: a connection accepted as the listener closed is still
		// answered (after HELLO, ERROR 6: the agent reconnects elsewhere,
		// or to the next process in an upgrade), never reset unanswered.
		s.accept.Wait(s.stop) // ends early when the server stops accepting
		if !s.admit(s.makeRoom) {
			s.refuseOverloaded(c)
			continue
		}
		s.handshaking.Add(c)
		s.wg.Add(1)
		go func() { // ends when the handshake fails or hands over to a session
			defer s.wg.Done()
			s.serveTLS(c)
		}()
	}
}

// addListener registers a serve loop's listener, to be closed when the
// server stops accepting, and counts the loop in s.wg (the loop calls
// Done when it returns): the goroutines it starts for connections
// accepted as the server stops are then counted before Shutdown's wait
// could see zero. It reports false, counting nothing, once stopping.
func (s *Server) addListener(closeFn func()) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining {
		return false
	}
	s.listeners = append(s.listeners, closeFn)
	s.wg.Add(1)
	return true
}

func (s *Server) stopped() bool { return s.stop.Err() != nil }

// fromSource applies SourceRate to a new connection from addr.
func (s *Server) fromSource(addr net.Addr) bool {
	if s.source.Load().Allow(addr, time.Now()) {
		return true
	}
	s.m.refused.WithLabelValues("source_rate").Inc()
	s.sourceLog.Do(func() {
		s.log.Warn("push: connections refused over push.source_rate (logged once a minute; counted in dpgate_push_refused_connections_total{reason=\"source_rate\"})",
			"source", addr.String(), "limit_per_second", s.cfg.SourceRate)
	})
	return false
}

// maxRefusing bounds the connections being told ERROR 5 at once; beyond
// it a connection over the limit is closed without a word.
const maxRefusing = 64

// refuseOverloaded answers a TLS connection over MaxConnections the way
// the protocol says, on its own goroutine: the handshake, the agent's
// HELLO (so closing leaves nothing unread that would reset the
// connection), ERROR 5, close. At most maxRefusing at a time, each
// bounded by the handshake timeout.
func (s *Server) refuseOverloaded(raw net.Conn) {
	select {
	case s.refusing <- struct{}{}:
	default:
		raw.Close()
		return
	}
	s.wg.Add(1)
	go func() {
		defer func() { <-s.refusing; s.wg.Done() }()
		tc := tls.Server(raw, s.tcpTLS)
		raw.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
		if err := tc.Handshake(); err != nil {
			raw.Close()
			return
		}
		if p, ok := s.cfg.Protocols[tc.ConnectionState().NegotiatedProtocol]; ok {
			raw.SetDeadline(time.Time{})
			p.Serve(tc) // the agents' limit is not another protocol's; Serve owns tc
			return
		}
		defer raw.Close()
		var hdr [wire.HeaderSize]byte
		if _, _, err := wire.ReadFrame(tc, &hdr, nil, 2048); err != nil {
			return
		}
		s.m.errorSent(wire.CodeOverloaded)
		tc.Write((&wire.ErrorFrame{Code: wire.CodeOverloaded, Reason: "connection limit reached; try another node"}).Marshal())
	}()
}

// checkKeys says why keys cannot verify device tokens.
func checkKeys(keys [][]byte) error {
	if len(keys) == 0 {
		return errors.New("push: auth token needs at least one token key")
	}
	for _, k := range keys {
		if len(k) < 16 {
			return fmt.Errorf("push: a token key of %d bytes; at least 16", len(k))
		}
	}
	return nil
}

// SetTokenKeys replaces the keys that verify device tokens (a reload after
// a key was added or retired); sessions already up are not touched.
func (s *Server) SetTokenKeys(keys [][]byte) error {
	if err := checkKeys(keys); err != nil {
		return err
	}
	keys = slices.Clone(keys)
	s.tokenKeys.Store(&keys)
	return nil
}

// admit counts a connection against MaxConnections. At the limit,
// room (if not nil) may close another connection and give its place.
func (s *Server) admit(room func() bool) bool {
	if s.conns.Add(1) > s.maxConns.Load() {
		s.conns.Add(-1)
		if room != nil && room() {
			return true // the place of the one closed
		}
		s.m.refused.WithLabelValues("max_connections").Inc()
		return false
	}
	return true
}

func (s *Server) serveTLS(raw net.Conn) {
	wc := &waitConn{Conn: raw, writeTimeout: s.cfg.WriteTimeout, wg: &s.wg}
	tc := tls.Server(wc, s.tcpTLS)
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.HandshakeTimeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		if s.handshakeDone(raw) { // not closed to make room: a failed handshake
			s.authFailed(raw.RemoteAddr(), err)
		}
		raw.Close()
		s.handshakeFailed(raw)
		return
	}
	if p, ok := s.cfg.Protocols[tc.ConnectionState().NegotiatedProtocol]; ok {
		s.handshakeFailed(raw) // not an agent (in a cluster: another node)
		p.Serve(tc)
		return
	}
	var peer *x509.Certificate
	if certs := tc.ConnectionState().PeerCertificates; len(certs) > 0 {
		peer = certs[0]
	}
	// The session runs on a fresh goroutine: the one that did the TLS
	// handshake has a grown stack that an idle session should not keep.
	s.startSession(tc, wc, raw, "tls", raw.RemoteAddr(), raw.LocalAddr(), peer)
}

func (s *Server) authFailed(remote net.Addr, err error) {
	reason := "tls"
	var refused *tlsconf.RefusedError
	if errors.As(err, &refused) {
		reason = refused.Label()
		s.refusedLog.Do(1, func(n int64) {
			s.log.Warn("push: agent certificate refused (logged once in 10 s; dpgate_push_auth_failures_total counts each)", "agent", remote.String(),
				"fingerprint", refused.Fingerprint, "subject", refused.Subject, "reason", refused.Reason, "refusals_since_last_line", n)
		})
	}
	s.m.authFailed.WithLabelValues(reason).Inc()
}

// authenticate checks HELLO's device id against the certificate or token.
// watchAllowList ends the sessions whose agent certificate a new
// handshake would refuse: at every change of the allow-list (a
// certificate removed here, or on another node and gossiped) and every
// minute (a certificate that expired while connected). A session lasts
// only as long as its certificate is allowed.
func (s *Server) watchAllowList(allow *tlsconf.AllowList) {
	defer s.wg.Done()
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		changed := allow.Changed()
		select {
		case <-s.stop.Done():
			return
		case <-changed:
		case <-t.C:
		}
		s.endRefused(allow)
	}
}

// endRefused ends the sessions whose certificate allow refuses now, with
// ERROR auth and the reason.
func (s *Server) endRefused(allow *tlsconf.AllowList) {
	s.mu.Lock()
	sessions := make([]*session, 0, len(s.sessions))
	for _, ss := range s.sessions {
		if ss.peer != nil {
			sessions = append(sessions, ss)
		}
	}
	s.mu.Unlock()
	for _, ss := range sessions {
		err := allow.Check(ss.peer)
		if err == nil {
			continue
		}
		ss.fail(wire.CodeAuth, err.Error())
		ss.close()
		s.log.Warn("push: session ended: its agent certificate is no longer allowed", "device", ss.device, "err", err)
	}
}

func (s *Server) authenticate(h *wire.Hello, peer *x509.Certificate) error {
	switch s.cfg.Auth {
	case AuthCert:
		if peer == nil {
			return errors.New("a client certificate is required")
		}
		if h.DeviceID != peer.Subject.CommonName && !slices.Contains(peer.DNSNames, h.DeviceID) {
			return fmt.Errorf("device id %q is not the certificate's (%q)", h.DeviceID, peer.Subject.CommonName)
		}
	case AuthToken:
		dev, err := wire.VerifyToken(*s.tokenKeys.Load(), h.Token, time.Now())
		if err != nil {
			return err
		}
		if dev != h.DeviceID {
			return fmt.Errorf("token is for %q, not %q", dev, h.DeviceID)
		}
	}
	return nil
}
