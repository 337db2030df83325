// Package push is dpgate's push service on port 13295: agents hold one
// persistent connection (TLS over TCP, or QUIC on UDP with the same
// protocol on one bidirectional stream) and the management server's
// pushes reach them in milliseconds, at least once.
//
// Pieces: push/wire is the wire format (docs/PROTOCOL.md) and the HMAC
// device tokens, all an agent needs; push/queue the durable per-device
// queue on bbolt (a push is fsynced before the API answers, removed on
// ACK, expired after its TTL) and the device table; session.go
// one agent connection; this file accepts, authenticates and routes
// pushes to sessions; quic.go the QUIC listener. The agent side is
// push/client, which depends on push/wire alone.
package push

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	metrics "github.com/hashicorp/go-metrics"
	"github.com/quic-go/quic-go"
	"golang.org/x/time/rate"

	"github.com/dpgate/dpgate/internal/ratelimit"
	"github.com/dpgate/dpgate/link"
	"github.com/dpgate/dpgate/push/queue"
	"github.com/dpgate/dpgate/push/wire"
	"github.com/dpgate/dpgate/tlsconf"
)

// Auth modes.
const (
	AuthCert  = "cert"
	AuthToken = "token"
	AuthNone  = "none"
)

// Config configures a Server. Zero values mean the defaults in comments.
type Config struct {
	Identity  *tlsconf.Identity  // the gateway certificate. Required.
	AllowList *tlsconf.AllowList // required for AuthCert
	Auth      string             // AuthCert (default), AuthToken or AuthNone
	// TokenKeys verify device tokens (any of them); required for
	// AuthToken, each at least 16 bytes. SetTokenKeys replaces them live.
	TokenKeys [][]byte
	Queue     *queue.Queue    // required
	Registry  *queue.Registry // required

	// Keepalive is the PING interval agents are told to keep. Default: 30s.
	Keepalive time.Duration
	// HandshakeTimeout bounds TLS plus HELLO. Default: 10s.
	HandshakeTimeout time.Duration
	// WriteTimeout bounds one frame write. Default: 10s.
	WriteTimeout time.Duration
	// MaxConnections caps sessions. Default: 100000.
	MaxConnections int
	// MaxPayload caps one push's payload in bytes. Default: 4096.
	MaxPayload int
	// AcceptRate caps new connections per second, smoothing reconnect
	// storms (with a burst of a quarter of that). Default: 2000.
	AcceptRate float64
	// SourceRate caps new connections per second from one source address
	// (an IPv6 /64), with a burst of twice that, checked before the accept
	// budget above so one flooding host cannot queue everyone else behind
	// it. Default: 200; negative: no limit.
	SourceRate float64
	// QUICRetryAbove is how many QUIC handshakes from unvalidated
	// addresses may be in progress before new ones must first answer a
	// Retry (address validation, RFC 9000 section 8.1.2). Default: 64;
	// negative: always.
	QUICRetryAbove int
	// ExpireInterval is how often expired pushes are swept. Default: 10s.
	ExpireInterval time.Duration
	// PathInterval is how often every session's path figures (TCP_INFO,
	// QUIC ConnectionStats) are sampled into the metrics. Default: 10s;
	// negative: never (GET /v1/devices/{id} still reads them on demand).
	PathInterval time.Duration
	// Nodes lists push addresses for WELCOME (failover order). Default:
	// the address the agent connected to.
	Nodes func() []string
	// Redirect, when set, is asked for every new session with the count of
	// sessions held here and whether the agent already comes from a
	// REDIRECT; if it names another node the agent gets REDIRECT there
	// instead of WELCOME (the cluster's least-busy rule).
	Redirect func(sessions int, redirected bool) (addr string, ok bool)
	// ClassicKeyExchange leaves out the post-quantum hybrid group.
	ClassicKeyExchange bool

	// Cluster hooks. A TLS client offering ALPN PeerALPN on the push port
	// is another node of the cluster: it is handshaken with PeerTLS and
	// its connection handed to Peer. OnSession is called when a device's
	// session starts and when it ends (not when it is replaced on this
	// node); OnAck when a device acknowledges a queued push here.
	PeerTLS   *tls.Config
	Peer      func(net.Conn)
	OnSession func(device string, up bool, since time.Time)
	OnAck     func(device string, id [16]byte)

	Metrics *metrics.Metrics // default metrics.Default()
	Logger  *slog.Logger     // default slog.Default()
}

func (c *Config) withDefaults() {
	if c.Auth == "" {
		c.Auth = AuthCert
	}
	if c.Keepalive == 0 {
		c.Keepalive = 30 * time.Second
	}
	if c.HandshakeTimeout == 0 {
		c.HandshakeTimeout = 10 * time.Second
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = 10 * time.Second
	}
	if c.MaxConnections == 0 {
		c.MaxConnections = 100000
	}
	if c.MaxPayload == 0 {
		c.MaxPayload = 4096
	}
	if c.AcceptRate == 0 {
		c.AcceptRate = 2000
	}
	if c.SourceRate == 0 {
		c.SourceRate = 200
	}
	if c.QUICRetryAbove == 0 {
		c.QUICRetryAbove = 64
	}
	if c.ExpireInterval == 0 {
		c.ExpireInterval = 10 * time.Second
	}
	if c.PathInterval == 0 {
		c.PathInterval = 10 * time.Second
	}
	if c.Metrics == nil {
		c.Metrics = metrics.Default()
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

func (c *Config) validate() error {
	switch {
	case c.Identity == nil || c.Queue == nil || c.Registry == nil:
		return errors.New("push: Identity, Queue and Registry are required")
	case c.Auth == AuthCert && c.AllowList == nil:
		return errors.New("push: auth cert needs the AllowList")
	case c.Auth == AuthToken && checkKeys(c.TokenKeys) != nil:
		return checkKeys(c.TokenKeys)
	case c.Auth != AuthCert && c.Auth != AuthToken && c.Auth != AuthNone:
		return fmt.Errorf("push: unknown auth %q", c.Auth)
	case c.MaxPayload > wire.MaxFrame-64:
		return fmt.Errorf("push: MaxPayload %d exceeds the frame limit", c.MaxPayload)
	}
	return nil
}

// ErrPayloadTooLarge is returned by Push for an oversized payload.
var ErrPayloadTooLarge = errors.New("push: payload too large")

// Server is the push server. It does not listen: Serve and ServeQUIC take
// a listener and a packet connection.
type Server struct {
	cfg    Config
	log    *slog.Logger
	m      *metrics.Metrics
	queue  *queue.Queue
	reg    *queue.Registry
	tls    *tls.Config // QUIC and agents
	tcpTLS *tls.Config // tls, plus peers of the cluster when configured
	accept *rate.Limiter
	// refusing holds a token per connection being told ERROR 5.
	refusing chan struct{}
	source   *ratelimit.PerSource
	// sourceLog keeps the log line for source-rate refusals to one a minute.
	sourceLog rate.Sometimes

	conns       atomic.Int64 // connections held, handshakes included
	unvalidated atomic.Int64 // QUIC handshakes from unvalidated addresses in progress
	tokenKeys   atomic.Pointer[[][]byte]
	// Pushes written and acknowledged since the last flush to the metrics
	// (once a second): go-metrics takes locks in every sink per call, too
	// dear twice per push when a broadcast writes 19,000.
	sent, delivered atomic.Uint64
	wg              sync.WaitGroup
	done            chan struct{}
	once            sync.Once

	mu        sync.Mutex
	sessions  map[string]*session
	listeners []func() // close functions of the listeners
	// transports are the QUIC transports, closed once their sessions
	// are gone: closing one ends every connection on it at once, with
	// no DRAIN and no CONNECTION_CLOSE.
	transports []*quic.Transport
	raw        map[conn]struct{}
	draining   bool

	ackMu     sync.Mutex
	recent    map[[16]byte]struct{} // ids acknowledged lately, so a late copy is not delivered again
	recentLog [][16]byte            // the same ids, oldest first, to bound the set
	idWaiters map[[16]byte][]chan struct{}
}

// recentAcks bounds the set of recently acknowledged ids (about 3 MiB).
const recentAcks = 1 << 16

// New builds a server and starts its expiry sweeper; it does not listen.
func New(cfg Config) (*Server, error) {
	cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	var allow *tlsconf.AllowList
	if cfg.Auth == AuthCert {
		allow = cfg.AllowList
	}
	s := &Server{
		cfg:       cfg,
		log:       cfg.Logger,
		m:         cfg.Metrics,
		queue:     cfg.Queue,
		reg:       cfg.Registry,
		tls:       tlsconf.ServerConfig(cfg.Identity, allow, wire.ALPN),
		accept:    rate.NewLimiter(rate.Limit(cfg.AcceptRate), max(1, int(cfg.AcceptRate/4))),
		source:    ratelimit.New(cfg.SourceRate),
		refusing:  make(chan struct{}, maxRefusing),
		sourceLog: rate.Sometimes{Interval: time.Minute},
		done:      make(chan struct{}),
		sessions:  map[string]*session{},
		raw:       map[conn]struct{}{},
		recent:    map[[16]byte]struct{}{},

		idWaiters: map[[16]byte][]chan struct{}{},
	}
	keys := slices.Clone(cfg.TokenKeys)
	s.tokenKeys.Store(&keys)
	if cfg.ClassicKeyExchange {
		tlsconf.ClassicKeyExchange(s.tls)
	}
	s.tcpTLS = s.tls
	if cfg.PeerTLS != nil && cfg.Peer != nil {
		s.tcpTLS = s.tls.Clone()
		s.tcpTLS.GetConfigForClient = func(hi *tls.ClientHelloInfo) (*tls.Config, error) {
			if slices.Contains(hi.SupportedProtos, wire.PeerALPN) {
				return cfg.PeerTLS, nil
			}
			return nil, nil
		}
	}
	s.wg.Add(2)
	go s.every(cfg.ExpireInterval, s.expire) // exits when done is closed
	go s.every(time.Second, s.flushCounters)
	if cfg.PathInterval > 0 {
		s.wg.Add(1)
		go s.every(cfg.PathInterval, s.samplePaths)
	}
	return s, nil
}

// Serve accepts TLS-over-TCP agents on ln until Shutdown or Close.
func (s *Server) Serve(ln net.Listener) error {
	if !s.addListener(func() { ln.Close() }) {
		ln.Close()
		return nil
	}
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
			s.log.Warn("push: accept failed", "err", err)
			time.Sleep(50 * time.Millisecond) // e.g. out of descriptors: do not spin
			continue
		}
		if !s.fromSource(c.RemoteAddr()) {
			c.Close() // before any TLS work
			continue
		}
		s.accept.Wait(context.Background()) // smooth reconnect storms
		if !s.admit() {
			s.refuseOverloaded(c)
			continue
		}
		s.wg.Add(1)
		go func() { // ends when the handshake fails or hands over to a session
			defer s.wg.Done()
			s.serveTLS(c)
		}()
	}
}

func (s *Server) addListener(closeFn func()) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining {
		return false
	}
	s.listeners = append(s.listeners, closeFn)
	return true
}

func (s *Server) stopped() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// fromSource applies SourceRate to a new connection from addr.
func (s *Server) fromSource(addr net.Addr) bool {
	if s.source.Allow(addr, time.Now()) {
		return true
	}
	s.m.IncrCounterWithLabels([]string{"push", "refused"}, 1, []metrics.Label{{Name: "reason", Value: "source_rate"}})
	s.sourceLog.Do(func() {
		s.log.Warn("push: connections refused over push.source_rate (logged once a minute; counted in dpgate_push_refused{reason=\"source_rate\"})",
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
		if tc.ConnectionState().NegotiatedProtocol == wire.PeerALPN && s.cfg.Peer != nil {
			raw.SetDeadline(time.Time{})
			s.cfg.Peer(tc) // the agents' limit is not the cluster's; Peer owns tc
			return
		}
		defer raw.Close()
		var hdr [wire.HeaderSize]byte
		if _, _, err := wire.ReadFrame(tc, &hdr, nil, 2048); err != nil {
			return
		}
		s.m.IncrCounterWithLabels([]string{"push", "errors"}, 1, []metrics.Label{{Name: "code", Value: fmt.Sprint(wire.CodeOverloaded)}})
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

// admit counts a connection against MaxConnections.
func (s *Server) admit() bool {
	if s.conns.Add(1) > int64(s.cfg.MaxConnections) {
		s.conns.Add(-1)
		s.m.IncrCounterWithLabels([]string{"push", "refused"}, 1, []metrics.Label{{Name: "reason", Value: "max_connections"}})
		return false
	}
	return true
}

func (s *Server) serveTLS(raw net.Conn) {
	tc := tls.Server(raw, s.tcpTLS)
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.HandshakeTimeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		s.authFailed(raw.RemoteAddr(), err)
		raw.Close()
		s.conns.Add(-1)
		return
	}
	if tc.ConnectionState().NegotiatedProtocol == wire.PeerALPN && s.cfg.Peer != nil {
		s.conns.Add(-1) // a node of the cluster, not an agent
		s.cfg.Peer(tc)
		return
	}
	var peer *x509.Certificate
	if certs := tc.ConnectionState().PeerCertificates; len(certs) > 0 {
		peer = certs[0]
	}
	// The session runs on a fresh goroutine: the one that did the TLS
	// handshake has a grown stack that an idle session should not keep.
	s.startSession(tc, "tls", raw.RemoteAddr(), raw.LocalAddr(), peer)
}

func (s *Server) authFailed(remote net.Addr, err error) {
	reason := "tls"
	var refused *tlsconf.RefusedError
	if errors.As(err, &refused) {
		reason = "cert_" + refused.Reason
		s.log.Warn("push: agent certificate refused", "agent", remote.String(),
			"fingerprint", refused.Fingerprint, "subject", refused.Subject, "reason", refused.Reason)
	}
	s.m.IncrCounterWithLabels([]string{"push", "auth_failed"}, 1, []metrics.Label{{Name: "reason", Value: reason}})
}

// startSession reads HELLO, authenticates it, and runs the session on a
// new goroutine. It owns c and the connection count from here.
func (s *Server) startSession(c conn, transport string, remote, local net.Addr, peer *x509.Certificate) {
	var hdr [wire.HeaderSize]byte
	c.SetReadDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	typ, body, err := wire.ReadFrame(c, &hdr, nil, 2048)
	abort := func(code uint16, reason string) {
		s.m.IncrCounterWithLabels([]string{"push", "errors"}, 1, []metrics.Label{{Name: "code", Value: fmt.Sprint(code)}})
		c.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
		c.Write((&wire.ErrorFrame{Code: code, Reason: reason}).Marshal())
		c.Close()
		s.conns.Add(-1)
		s.log.Debug("push: session refused", "agent", remote.String(), "code", code, "reason", reason)
	}
	switch {
	case errors.Is(err, wire.ErrTooLarge):
		abort(wire.CodeFrameTooLarge, err.Error())
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
		s.m.IncrCounterWithLabels([]string{"push", "auth_failed"}, 1, []metrics.Label{{Name: "reason", Value: "hello"}})
		abort(wire.CodeAuth, err.Error())
		return
	}
	if s.cfg.Redirect != nil {
		if addr, ok := s.cfg.Redirect(s.Sessions(), h.Caps&wire.CapRedirected != 0); ok {
			c.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
			c.Write((&wire.Redirect{Reason: 2, Address: addr}).Marshal())
			c.Close()
			s.conns.Add(-1)
			s.m.IncrCounter([]string{"push", "redirected"}, 1)
			return
		}
	}
	ss := &session{srv: s, c: c, device: h.DeviceID, caps: h.Caps, transport: transport, remote: remote, since: time.Now(), id: newSessionID()}
	ss.lastSeen.Store(ss.since.UnixNano())
	nodes := []string{local.String()}
	if s.cfg.Nodes != nil {
		nodes = s.cfg.Nodes()
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
	s.raw[c] = struct{}{}
	s.mu.Unlock()
	c.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
	_, err = c.Write(welcome.Marshal())
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
	if s.cfg.OnSession != nil {
		s.cfg.OnSession(ss.device, true, ss.since)
	}
	s.m.IncrCounterWithLabels([]string{"push", "sessions", "started"}, 1, []metrics.Label{{Name: "transport", Value: ss.transport}})
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
	}
	delete(s.raw, ss.c)
	s.mu.Unlock()
	return current
}

// authenticate checks HELLO's device id against the certificate or token.
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

func (s *Server) runSession(ss *session) {
	defer s.wg.Done()
	err := ss.readLoop()
	ss.close()
	if s.unregister(ss) && s.cfg.OnSession != nil {
		s.cfg.OnSession(ss.device, false, ss.since)
	}
	s.conns.Add(-1)
	s.reg.Seen(ss.device, ss.remote, nil, time.Now())
	if err != nil && !errors.Is(err, net.ErrClosed) {
		s.log.Debug("push: session ended", "device", ss.device, "err", err)
	}
}

// Push queues one payload for one device (committed before it returns)
// and starts delivery if the device is connected here.
func (s *Server) Push(device string, payload []byte, ttl time.Duration) (wire.Message, error) {
	msgs, err := s.PushMany([]string{device}, payload, ttl)
	if err != nil {
		return wire.Message{}, err
	}
	return msgs[0], nil
}

// PushMany queues the payload for every device in one transaction.
func (s *Server) PushMany(devices []string, payload []byte, ttl time.Duration) ([]wire.Message, error) {
	if err := s.Check(devices, payload); err != nil {
		return nil, err
	}
	msgs, err := s.queue.Enqueue(devices, payload, ttl)
	if err != nil {
		return nil, err
	}
	s.m.IncrCounter([]string{"push", "queued"}, float32(len(msgs)))
	type kick struct {
		ss *session
		m  wire.Message
	}
	s.mu.Lock()
	var kicks []kick
	for i, d := range devices {
		if ss := s.sessions[d]; ss != nil {
			kicks = append(kicks, kick{ss, msgs[i]})
		}
	}
	s.mu.Unlock()
	for _, k := range kicks {
		k.ss.kickWith(k.m)
	}
	return msgs, nil
}

// Check refuses an oversized payload (ErrPayloadTooLarge) and device ids
// the protocol cannot carry.
func (s *Server) Check(devices []string, payload []byte) error {
	if len(payload) > s.cfg.MaxPayload {
		return fmt.Errorf("%w: %d bytes, the limit is %d", ErrPayloadTooLarge, len(payload), s.cfg.MaxPayload)
	}
	for _, d := range devices {
		if err := wire.CheckDeviceID(d); err != nil {
			return fmt.Errorf("%w: %v", ErrBadDevice, err)
		}
	}
	return nil
}

// ErrBadDevice is returned for a device id the protocol cannot carry.
var ErrBadDevice = errors.New("push: bad device id")

// acked removes an acknowledged push and wakes the WaitID callers of its id.
func (s *Server) acked(device string, seq uint64) {
	id, found, err := s.queue.Ack(device, seq)
	if err != nil {
		s.log.Error("push: ack", "device", device, "seq", seq, "err", err)
		return
	}
	if found {
		s.delivered.Add(1)
		s.ackedIDs([][16]byte{id})
		if s.cfg.OnAck != nil {
			s.cfg.OnAck(device, id)
		}
	}
}

// ackedIDs records ids as acknowledged and wakes their WaitID callers.
func (s *Server) ackedIDs(ids [][16]byte) {
	s.ackMu.Lock()
	var chans []chan struct{}
	for _, id := range ids {
		if _, ok := s.recent[id]; !ok {
			s.recent[id] = struct{}{}
			s.recentLog = append(s.recentLog, id)
		}
		chans = append(chans, s.idWaiters[id]...)
		delete(s.idWaiters, id)
	}
	if n := len(s.recentLog) - recentAcks; n > 0 {
		for _, id := range s.recentLog[:n] {
			delete(s.recent, id)
		}
		s.recentLog = append(s.recentLog[:0], s.recentLog[n:]...)
	}
	s.ackMu.Unlock()
	for _, ch := range chans {
		close(ch)
	}
}

// WaitID waits until the push with this id is acknowledged here or
// reported acknowledged by another node of the cluster (Remove with
// acked), or ctx ends.
func (s *Server) WaitID(ctx context.Context, id [16]byte) error {
	ch := make(chan struct{})
	s.ackMu.Lock()
	if _, done := s.recent[id]; done {
		s.ackMu.Unlock()
		return nil
	}
	s.idWaiters[id] = append(s.idWaiters[id], ch)
	s.ackMu.Unlock()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		s.ackMu.Lock()
		list := slices.DeleteFunc(s.idWaiters[id], func(c chan struct{}) bool { return c == ch })
		if len(list) == 0 {
			delete(s.idWaiters, id)
		} else {
			s.idWaiters[id] = list
		}
		s.ackMu.Unlock()
		return ctx.Err()
	}
}

// Insert commits copies of pushes accepted on another node of the cluster
// (skipping ids already queued or acknowledged lately) and starts their
// delivery to devices connected here. It returns the items added.
func (s *Server) Insert(items []queue.Item) ([]queue.Item, error) {
	s.ackMu.Lock()
	fresh := slices.DeleteFunc(slices.Clone(items), func(it queue.Item) bool {
		_, done := s.recent[it.ID]
		return done
	})
	s.ackMu.Unlock()
	if len(fresh) == 0 {
		return nil, nil
	}
	added, err := s.queue.Insert(fresh)
	if err != nil {
		return nil, err
	}
	// An ACK may have been recorded while the copy was being committed
	// (Remove records before it removes, so one of the two sees the
	// other): take those out again.
	s.ackMu.Lock()
	late := map[string][][16]byte{}
	added = slices.DeleteFunc(added, func(it queue.Item) bool {
		_, done := s.recent[it.ID]
		if done {
			late[it.Device] = append(late[it.Device], it.ID)
		}
		return done
	})
	s.ackMu.Unlock()
	for dev, ids := range late {
		if err := s.queue.Remove(dev, ids); err != nil {
			return added, err
		}
	}
	s.m.IncrCounter([]string{"push", "copies_stored"}, float32(len(added)))
	s.mu.Lock()
	var kicks []*session
	var msgs []wire.Message
	for _, it := range added {
		if ss := s.sessions[it.Device]; ss != nil {
			kicks = append(kicks, ss)
			msgs = append(msgs, it.Message)
		}
	}
	s.mu.Unlock()
	for i, ss := range kicks {
		ss.kickWith(msgs[i])
	}
	return added, nil
}

// Remove deletes a device's copies by id: acknowledged on another node
// (acked: recorded so a late copy is not delivered again, and WaitID
// callers woken), or handed over to the nodes that keep them now.
func (s *Server) Remove(device string, ids [][16]byte, acked bool) error {
	if acked { // first, so an Insert committing these ids now drops them after
		s.ackedIDs(ids)
	}
	return s.queue.Remove(device, ids)
}

// Pending returns what is queued for a device, oldest first (at most
// 10,000 messages).
func (s *Server) Pending(device string) ([]wire.Message, error) {
	return s.queue.Pending(device, 0, 10000)
}

// QueuedDevices lists the devices with queued pushes.
func (s *Server) QueuedDevices() []string { return s.queue.Devices() }

// Holds reports whether the device is connected here.
func (s *Server) Holds(device string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sessions[device] != nil
}

// HeldDevices lists the devices connected here, each with the time its
// session began (what orders registrations between nodes).
func (s *Server) HeldDevices() map[string]time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]time.Time, len(s.sessions))
	for d, ss := range s.sessions {
		out[d] = ss.since
	}
	return out
}

// every calls fn every d until the server stops (one of the server's
// goroutines: s.wg counts it).
func (s *Server) every(d time.Duration, fn func()) {
	defer s.wg.Done()
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
			fn()
		}
	}
}

// flushCounters adds the pushes written and acknowledged since the last
// call to the metrics.
func (s *Server) flushCounters() {
	if n := s.sent.Swap(0); n > 0 {
		s.m.IncrCounter([]string{"push", "sent"}, float32(n))
	}
	if n := s.delivered.Swap(0); n > 0 {
		s.m.IncrCounter([]string{"push", "delivered"}, float32(n))
	}
}

// expire drops the pushes past their TTL.
func (s *Server) expire() {
	counts, err := s.queue.Expire()
	if err != nil {
		s.log.Error("push: expiry sweep", "err", err)
		return
	}
	for dev, n := range counts {
		s.log.Warn("push: pushes expired undelivered", "device", dev, "count", n)
		s.m.IncrCounter([]string{"push", "expired"}, float32(n))
	}
}

// samplePaths samples every session's path: the smoothed RTT of each into
// push.path.rtt_ms and, per transport, lost over sent packets (segments
// retransmitted over sent for TCP) into push.path.loss_ratio.
func (s *Server) samplePaths() {
	s.mu.Lock()
	sessions := make([]*session, 0, len(s.sessions))
	for _, ss := range s.sessions {
		sessions = append(sessions, ss)
	}
	s.mu.Unlock()
	type sums struct{ sent, lost, n uint64 }
	by := map[string]*sums{}
	for _, ss := range sessions {
		p, ok := ss.path()
		if !ok {
			continue
		}
		l := []metrics.Label{{Name: "transport", Value: ss.transport}}
		s.m.AddSampleWithLabels([]string{"push", "path", "rtt_ms"}, float32(p.RTT.Microseconds())/1000, l)
		t := by[ss.transport]
		if t == nil {
			t = &sums{}
			by[ss.transport] = t
		}
		t.sent, t.lost, t.n = t.sent+p.Sent, t.lost+p.Lost, t.n+1
	}
	for transport, t := range by {
		l := []metrics.Label{{Name: "transport", Value: transport}}
		if t.sent > 0 {
			s.m.SetGaugeWithLabels([]string{"push", "path", "loss_ratio"}, float32(float64(t.lost)/float64(t.sent)), l)
		}
		s.m.SetGaugeWithLabels([]string{"push", "path", "sampled"}, float32(t.n), l)
	}
}

// DeviceStatus is a device as GET /v1/devices shows it.
type DeviceStatus struct {
	ID         string     `json:"id"`
	Connected  bool       `json:"connected"`
	Transport  string     `json:"transport,omitempty"`
	RemoteAddr string     `json:"remote_addr,omitempty"`
	Since      *time.Time `json:"since,omitempty"`
	LastSeen   time.Time  `json:"last_seen"`
	Queued     int        `json:"queued"`
	// Corrupt counts this device's pushes that failed the store's
	// checksum: kept aside in the store, never delivered.
	Corrupt    int        `json:"corrupt_pushes,omitempty"`
	LocalAddr  string     `json:"local_addr,omitempty"`
	MAC        string     `json:"mac,omitempty"`
	ShutDownAt *time.Time `json:"shut_down_at,omitempty"` // the agent said it shuts down
	// Path is what the connection's transport knows of the agent's path
	// (TCP_INFO or QUIC ConnectionStats), read when asked.
	Path *link.PathStats `json:"path,omitempty"`
}

// Device returns one device's status.
func (s *Server) Device(id string) (DeviceStatus, bool) {
	rec, known := s.reg.Get(id)
	s.mu.Lock()
	ss := s.sessions[id]
	s.mu.Unlock()
	queued, corrupt := s.queue.Len(id)
	if !known && ss == nil && queued == 0 && corrupt == 0 {
		return DeviceStatus{}, false
	}
	st := DeviceStatus{ID: id, LastSeen: rec.LastSeen, Queued: queued, Corrupt: corrupt, RemoteAddr: rec.LastAddr, LocalAddr: rec.LocalAddr, MAC: rec.MAC, ShutDownAt: rec.ShutDownAt}
	if ss != nil {
		since := ss.since.UTC()
		st.Connected, st.Transport, st.RemoteAddr, st.Since = true, ss.transport, ss.remote.String(), &since
		st.LastSeen = time.Unix(0, ss.lastSeen.Load()).UTC()
		if p, ok := ss.path(); ok {
			st.Path = &p
		}
	}
	return st, true
}

// Devices returns every known device's status.
func (s *Server) Devices() []DeviceStatus {
	var out []DeviceStatus
	for _, id := range s.reg.IDs() {
		if d, ok := s.Device(id); ok {
			out = append(out, d)
		}
	}
	return out
}

// ErrConnected is returned by RemoveDevice for a device with a session.
var ErrConnected = errors.New("push: device is connected")

// RemoveDevice forgets a device and drops what is queued for it. A
// connected device is refused (ErrConnected): it would be known again at
// once.
func (s *Server) RemoveDevice(id string) (bool, error) {
	if s.Holds(id) {
		return false, fmt.Errorf("%w: %s", ErrConnected, id)
	}
	_, known := s.reg.Get(id)
	queued, _ := s.queue.Len(id)
	if !known && queued == 0 {
		return false, nil
	}
	return true, s.reg.Remove(id)
}

// Expired is the number of pushes expired undelivered since start.
func (s *Server) Expired() uint64 { return s.queue.Expired() }

// ShutDown records a device's shutdown notice: its connection ending now
// is expected.
func (s *Server) ShutDown(device string, at time.Time) error {
	s.m.IncrCounter([]string{"push", "shutdown_notices"}, 1)
	return s.reg.ShutDown(device, at)
}

// KnownDevices returns the ids "push to all" reaches.
func (s *Server) KnownDevices() []string { return s.reg.IDs() }

// Sessions is the number of connected agents.
func (s *Server) Sessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}

// Wake sends a WAKE frame to the device when it is connected here and
// handles them (HELLO capability bit 0), and reports whether it did.
func (s *Server) Wake(device string) bool {
	s.mu.Lock()
	ss := s.sessions[device]
	s.mu.Unlock()
	if ss == nil || ss.caps&wire.CapWake == 0 {
		return false
	}
	return ss.send([]byte{wire.TypeWake, 0, 0, 0}) == nil
}

// Move sends REDIRECT (reason 2, balancing) to one session per address
// given, each told to reconnect there, and returns how many it sent. The
// agents close; a session still open after 10 s is closed here.
func (s *Server) Move(addrs []string) int {
	s.mu.Lock()
	list := make([]*session, 0, len(addrs))
	for _, ss := range s.sessions { // map order: an arbitrary choice
		if len(list) == len(addrs) {
			break
		}
		list = append(list, ss)
	}
	s.mu.Unlock()
	for i, ss := range list {
		ss.send((&wire.Redirect{Reason: 2, Address: addrs[i]}).Marshal())
		time.AfterFunc(10*time.Second, ss.close)
	}
	s.m.IncrCounter([]string{"push", "moved"}, float32(len(list)))
	return len(list)
}

// Shutdown stops accepting, sends DRAIN to every agent (each told to
// reconnect elsewhere after a random delay up to spread, so they do not
// all arrive at once), waits for them to leave until ctx ends, then
// closes the rest.
func (s *Server) Shutdown(ctx context.Context, spread time.Duration) error {
	s.stopAccepting()
	s.mu.Lock()
	list := make([]*session, 0, len(s.sessions))
	for _, ss := range s.sessions {
		list = append(list, ss)
	}
	s.mu.Unlock()
	for _, ss := range list {
		delay := uint32(0)
		if spread > 0 {
			delay = uint32(randDuration(spread) / time.Millisecond)
		}
		ss.send((&wire.Drain{DelayMillis: delay, Reason: "server shutting down"}).Marshal())
	}
	idle := make(chan struct{})
	go func() { s.wg.Wait(); close(idle) }() // ends once every session is gone
	defer s.flushCounters()
	defer s.closeTransports()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		s.tellShutdown(time.Second)
		s.closeConns()
		<-idle
		return ctx.Err()
	}
}

// tellShutdown sends ERROR 6 (shutdown) to every session still open, the
// agents that ignored DRAIN, each bounded by within: a stuck agent is not
// waited for. A write already blocked on such an agent ends then too.
func (s *Server) tellShutdown(within time.Duration) {
	s.mu.Lock()
	list := make([]*session, 0, len(s.sessions))
	for _, ss := range s.sessions {
		list = append(list, ss)
	}
	s.mu.Unlock()
	deadline := time.Now().Add(within)
	frame := (&wire.ErrorFrame{Code: wire.CodeShutdown, Reason: "the gateway is shutting down and the drain deadline passed"}).Marshal()
	var wg sync.WaitGroup
	for _, ss := range list {
		ss.c.SetWriteDeadline(deadline) // unblocks a flusher stuck on this agent
		wg.Add(1)
		go func() {
			defer wg.Done()
			ss.sendBy(frame, deadline)
		}()
	}
	wg.Wait()
}

// Close stops at once. It is idempotent.
func (s *Server) Close() error {
	s.stopAccepting()
	s.closeConns()
	s.wg.Wait()
	s.closeTransports()
	s.flushCounters()
	return nil
}

// closeTransports stops reading the QUIC sockets, after the sessions on
// them are gone. (Another process may read them next: an upgrade.)
func (s *Server) closeTransports() {
	s.mu.Lock()
	trs := s.transports
	s.transports = nil
	s.mu.Unlock()
	for _, tr := range trs {
		tr.Close()
	}
}

func (s *Server) stopAccepting() {
	s.once.Do(func() { close(s.done) })
	s.mu.Lock()
	s.draining = true
	fns := s.listeners
	s.listeners = nil
	s.mu.Unlock()
	for _, f := range fns {
		f()
	}
}

func randDuration(d time.Duration) time.Duration { return time.Duration(mrand.Int64N(int64(d))) }

func (s *Server) closeConns() {
	s.mu.Lock()
	var cs []conn
	for c := range s.raw {
		cs = append(cs, c)
	}
	s.mu.Unlock()
	for _, c := range cs {
		c.Close()
	}
}
