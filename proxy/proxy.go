// Package proxy relays agents to central servers the way a Sensor does:
// agents connect with TLS and pin the gateway's certificate (optionally
// presenting a client certificate from the allow-list); the proxy opens
// TLS to one of several upstreams, pinned or verified, and copies bytes
// both ways.
//
// Pieces: upstream.go holds each upstream's TLS settings, health
// (passive ejection with backoff, active handshakes) and load; balance.go
// orders them per connection (least-busy or ordered); relay.go copies
// with half-close, idle timeout and small-then-pooled buffers; limits.go
// has the per-source connection rate limit and the ingress shaper; this
// file accepts, authenticates, fails over and drains.
package proxy

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/time/rate"

	"github.com/dpgate/dpgate/internal/pending"
	"github.com/dpgate/dpgate/internal/ratelimit"
	"github.com/dpgate/dpgate/tlsconf"
)

// ErrNoUpstream is returned when every upstream failed for a connection.
var ErrNoUpstream = errors.New("proxy: no upstream reachable")

// Proxy is the TLS relay. It does not listen: Serve takes a listener.
type Proxy struct {
	cfg Config
	log *slog.Logger
	m   *metrics
	// ups are the upstreams in configuration order; SetUpstreams
	// replaces the list (relays in flight keep theirs).
	ups atomic.Pointer[[]*upstream]
	// upsMu serializes SetUpstreams and SetClientCert.
	upsMu sync.Mutex
	// maxConns and source are the limits SetLimits changes live.
	maxConns atomic.Int64
	// srvTLS is the agents' TLS configuration; SetAllowList replaces it.
	srvTLS     atomic.Pointer[tls.Config]
	validating atomic.Bool
	dialer     net.Dialer
	source     atomic.Pointer[ratelimit.PerSource]
	shaper     *rate.Limiter
	// refusedLog keeps the refused-certificate line to one in 10 s: a
	// host presenting foreign certificates could otherwise write one per
	// handshake.
	refusedLog *ratelimit.Every
	acceptLog  *ratelimit.Every // accept failures: a line in 10 s
	evictLog   *ratelimit.Every // handshakes closed to make room: a line in 10 s
	// handshaking lists the agent connections counted in conns whose TLS
	// handshake is not done (makeRoom).
	handshaking *pending.List

	conns      atomic.Int64 // agent connections held, handshakes included
	bytesIn    atomic.Int64 // agent->upstream, counted as relays write
	bytesOut   atomic.Int64 // upstream->agent
	refused    atomic.Uint64
	noUpstream atomic.Uint64  // agents no upstream took (Status)
	relaysWG   sync.WaitGroup // one per agent connection
	loopsWG    sync.WaitGroup // accept loops and the health loop
	done       chan struct{}
	closeOnce  sync.Once

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	live      map[net.Conn]struct{} // agent connections, for forced close
	closing   bool                  // listeners closed (StopAccepting)
	cut       bool                  // relays cut (closeAll): nothing more is admitted
}

// New builds a proxy and starts its health checks; it does not listen.
func New(cfg Config) (*Proxy, error) {
	cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	p := &Proxy{
		cfg:         cfg,
		log:         cfg.Logger,
		dialer:      net.Dialer{KeepAlive: 30 * time.Second},
		shaper:      ingressShaper(cfg.MaxIngressRate),
		refusedLog:  ratelimit.NewEvery(10 * time.Second),
		acceptLog:   ratelimit.NewEvery(10 * time.Second),
		evictLog:    ratelimit.NewEvery(10 * time.Second),
		handshaking: pending.New(),
		done:        make(chan struct{}),
		listeners:   map[net.Listener]struct{}{},
		live:        map[net.Conn]struct{}{},
	}
	p.m = newMetrics(cfg.Registerer, p)
	p.SetLimits(cfg.MaxConnections, cfg.SourceRate)
	if err := p.SetUpstreams(cfg.Upstreams); err != nil {
		return nil, err
	}
	p.SetAllowList(cfg.AllowList)
	p.loopsWG.Add(1)
	go p.healthLoop() // exits when done is closed
	return p, nil
}

// Serve accepts agents on ln until Shutdown or Close, then returns nil.
func (p *Proxy) Serve(ln net.Listener) error {
	p.mu.Lock()
	if p.closing {
		p.mu.Unlock()
		ln.Close()
		return nil
	}
	p.listeners[ln] = struct{}{}
	p.loopsWG.Add(1)
	p.mu.Unlock()
	defer p.loopsWG.Done()

	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			select {
			case <-p.done:
				return nil
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				// Out of file descriptors or a transient error: back off
				// instead of spinning, and keep serving the relays we have.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				p.acceptLog.Do(1, func(n int64) {
					p.log.Warn("proxy: accept failed; backing off (logged once in 10 s)", "err", err, "backoff", backoff, "failures_since_last_line", n)
				})
				p.m.acceptErrors.Inc()
				time.Sleep(backoff)
				continue
			}
			p.mu.Lock()
			closing := p.closing
			p.mu.Unlock()
			if closing {
				return nil
			}
			return fmt.Errorf("proxy: accept: %w", err)
		}
		backoff = 0
		if !p.admit(c) {
			continue
		}
		go p.handle(c) // tracked in relaysWG by admit; exits when the relay ends
	}
}

// admit applies the connection limits; a refused connection is closed.
// At max_connections, a connection from a source within its rate takes
// the place of the one longest in its TLS handshake, if that is over a
// second (makeRoom).
func (p *Proxy) admit(c net.Conn) bool {
	reason, placeTaken := "", false
	switch {
	case p.conns.Load() >= p.maxConns.Load():
		reason = "max_connections"
		if p.source.Load().Allow(c.RemoteAddr(), time.Now()) && p.makeRoom() {
			reason, placeTaken = "", true
		}
	case !p.source.Load().Allow(c.RemoteAddr(), time.Now()):
		reason = "source_rate"
	}
	p.mu.Lock()
	if p.cut {
		// Relays are being cut. A connection accepted as the listeners
		// closed (closing alone) is relayed like the rest: in an upgrade
		// the next process has the listener, and this one keeps relaying.
		reason = "shutting_down"
		if placeTaken {
			p.conns.Add(-1) // the place of the one closed, given back
		}
	}
	if reason == "" {
		p.live[c] = struct{}{}
		p.relaysWG.Add(1)
		if !placeTaken {
			p.conns.Add(1)
		}
		p.handshaking.Add(c)
	}
	p.mu.Unlock()
	if reason != "" {
		p.refused.Add(1)
		p.m.refused.WithLabelValues(reason).Inc()
		c.Close()
		return false
	}
	return true
}

// forget drops c and gives back its place, unless c was closed to make
// room (its place is another's).
func (p *Proxy) forget(c net.Conn) {
	p.mu.Lock()
	delete(p.live, c)
	p.mu.Unlock()
	if !p.handshaking.Remove(c) {
		p.conns.Add(-1)
	}
	p.relaysWG.Done()
}

// makeRoom closes the agent connection longest in its TLS handshake, if
// that is over pending.EvictAfter, and reports whether it did: its place under
// max_connections is then the caller's. Connections that open and send
// nothing (a slowloris) would otherwise keep every agent out (package
// pending). Relays are never closed.
func (p *Proxy) makeRoom() bool {
	c := p.handshaking.Evict(pending.EvictAfter)
	if c == nil {
		return false
	}
	p.m.evicted.Inc()
	p.evictLog.Do(1, func(n int64) {
		p.log.Warn("proxy: connections still in their TLS handshake after a second closed to make room at proxy.max_connections (logged once in 10 s; dpgate_proxy_handshakes_evicted_total counts each)",
			"last_from", c.RemoteAddr().String(), "closed_since_last_line", n)
	})
	return true
}

// handle sets one agent connection up: handshake, then upstream. The
// relay then runs on fresh goroutines and this one exits, so the stack
// the TLS handshakes grew is not held for the life of an idle relay.
func (p *Proxy) handle(raw net.Conn) {
	agent := tls.Server(newSock(raw), p.srvTLS.Load())
	ctx, cancel := context.WithTimeout(context.Background(), p.cfg.HandshakeTimeout)
	err := agent.HandshakeContext(ctx)
	cancel()
	if err != nil {
		if p.handshaking.Settle(raw) { // not closed to make room: a failed handshake
			p.handshakeFailed(raw.RemoteAddr(), err)
		}
		p.finish(raw)
		return
	}
	if !p.handshaking.Settle(raw) {
		p.finish(raw) // closed to make room as it finished: its place is another's
		return
	}
	p.m.handshakes.Inc()

	up, u, err := p.connectUpstream(raw.RemoteAddr(), raw.LocalAddr())
	if err != nil {
		p.log.Warn("proxy: no upstream for agent", "agent", raw.RemoteAddr().String(), "err", err)
		p.m.noUpstream.Inc()
		p.noUpstream.Add(1)
		p.finish(raw)
		return
	}
	u.relays.Add(1)
	go p.relay(raw, agent, up, u) // owns the connection from here; tracked by relaysWG
}

// finish closes an agent connection and forgets it.
func (p *Proxy) finish(raw net.Conn) {
	raw.Close()
	p.forget(raw)
}

// relay copies until the relay ends, then closes both sides.
func (p *Proxy) relay(raw net.Conn, agent, up *tls.Conn, u *upstream) {
	defer p.finish(raw)
	defer u.active.Add(-1)
	// Close the socket, not the TLS conn: a clean relay already sent
	// close_notify both ways, and tls.Conn.Close could block for seconds
	// writing one to an upstream that is not reading.
	defer up.NetConn().Close()

	r := &relay{idle: p.cfg.IdleTimeout, shaper: p.shaper, in: &p.bytesIn, out: &p.bytesOut}
	err := r.run(agent, up)
	u.observeTCP(up.NetConn())
	end := "closed"
	switch {
	case errors.Is(err, errIdle):
		end = "idle"
	case err != nil:
		end = "error"
	}
	p.m.relaysEnded.WithLabelValues(end).Inc()
	if end == "error" {
		p.log.Debug("proxy: relay ended", "agent", raw.RemoteAddr().String(), "upstream", u.addr, "err", err)
	}
}

// handshakeFailed logs and counts a failed agent handshake by reason; a
// refused client certificate is logged with its fingerprint.
func (p *Proxy) handshakeFailed(remote net.Addr, err error) {
	reason := "tls"
	var refused *tlsconf.RefusedError
	switch {
	case errors.As(err, &refused):
		reason = refused.Label()
		p.refusedLog.Do(1, func(n int64) {
			p.log.Warn("proxy: agent certificate refused (logged once in 10 s; dpgate_proxy_handshake_failures_total counts each)", "agent", remote.String(),
				"fingerprint", refused.Fingerprint, "subject", refused.Subject, "reason", refused.Reason, "refusals_since_last_line", n)
		})
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded):
		reason = "timeout"
	default:
		p.log.Debug("proxy: agent handshake failed", "agent", remote.String(), "err", err)
	}
	p.m.handshakeFail.WithLabelValues(reason).Inc()
}

// connectUpstream tries the upstreams in balance order until one
// completes TLS. Nothing has been read from the agent yet, so trying the
// next one is always safe. The returned upstream's active count is
// already raised.
func (p *Proxy) connectUpstream(src, dst net.Addr) (*tls.Conn, *upstream, error) {
	if !p.cfg.ProxyProtocol {
		src, dst = nil, nil
	}
	var errs []error
	for _, u := range candidates(p.upstreams(), p.cfg.Balance, time.Now()) {
		u.active.Add(1) // reserve now, so concurrent agents spread out
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), p.cfg.ConnectionTimeout)
		c, err := u.dial(ctx, &p.dialer, src, dst)
		cancel()
		if err == nil {
			u.dialSeconds.Observe(time.Since(start).Seconds())
			if u.succeeded() {
				p.log.Info("proxy: upstream back", "upstream", u.addr)
			}
			return c, u, nil
		}
		u.active.Add(-1)
		p.upstreamFailed(u, err)
		errs = append(errs, fmt.Errorf("%s: %w", u.addr, err))
	}
	return nil, nil, fmt.Errorf("%w: %w", ErrNoUpstream, errors.Join(errs...))
}

func (p *Proxy) upstreamFailed(u *upstream, err error) {
	if until := u.failed(err, time.Now(), p.cfg.EjectAfter, p.cfg.EjectBackoff); !until.IsZero() {
		p.log.Warn("proxy: upstream ejected", "upstream", u.addr, "until", until.Format(time.RFC3339), "err", err)
	}
}

// healthLoop handshakes with every upstream each HealthInterval. It
// exits when done is closed.
func (p *Proxy) healthLoop() {
	defer p.loopsWG.Done()
	check := time.NewTimer(0)
	defer check.Stop()
	for {
		select {
		case <-p.done:
			return
		case <-check.C:
			var wg sync.WaitGroup
			for _, u := range p.upstreams() {
				wg.Add(1)
				go func() { // waited for just below
					defer wg.Done()
					p.checkUpstream(u)
				}()
			}
			wg.Wait()
			check.Reset(p.cfg.HealthInterval)
		}
	}
}

func (p *Proxy) checkUpstream(u *upstream) {
	ctx, cancel := context.WithTimeout(context.Background(), p.cfg.ConnectionTimeout)
	defer cancel()
	go func() { // ends the check early on shutdown; exits with ctx
		select {
		case <-p.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	c, err := u.dial(ctx, &p.dialer, nil, nil)
	if err != nil {
		select {
		case <-p.done:
			return
		default:
		}
		p.upstreamFailed(u, fmt.Errorf("health check: %w", err))
		return
	}
	c.NetConn().Close()
	if u.succeeded() {
		p.log.Info("proxy: upstream back", "upstream", u.addr)
	}
}

// Status is the proxy's part of /v1/status.
type Status struct {
	Balance     string `json:"balance"`
	Connections int64  `json:"connections"`
	// MaxConnections is the limit in force (SetLimits).
	MaxConnections int64  `json:"max_connections"`
	Refused        uint64 `json:"refused"`
	// NoUpstream counts agents whose connection was closed because no
	// upstream could be reached for it.
	NoUpstream uint64           `json:"no_upstream"`
	BytesIn    int64            `json:"bytes_in"`  // agents to upstreams, counted as they flow
	BytesOut   int64            `json:"bytes_out"` // upstreams to agents
	Upstreams  []UpstreamStatus `json:"upstreams"`
}

// SetAllowList turns the validation of agents' certificates on (agents
// must present one that is in allow) or, with nil, off; new handshakes
// use it, relays up are untouched (the console's switch).
func (p *Proxy) SetAllowList(allow *tlsconf.AllowList) {
	cfg := tlsconf.ServerConfig(p.cfg.Identity, allow)
	cfg.CurvePreferences = p.cfg.KeyExchange
	p.srvTLS.Store(cfg)
	p.validating.Store(allow != nil)
}

// ValidatesAgentCerts reports whether agents must present a certificate
// from the allow-list.
func (p *Proxy) ValidatesAgentCerts() bool { return p.validating.Load() }

// Status reports the proxy's state.
func (p *Proxy) Status() Status {
	now := time.Now()
	s := Status{
		Balance:        p.cfg.Balance,
		Connections:    p.conns.Load(),
		MaxConnections: p.maxConns.Load(),
		Refused:        p.refused.Load(),
		NoUpstream:     p.noUpstream.Load(),
		BytesIn:        p.bytesIn.Load(),
		BytesOut:       p.bytesOut.Load(),
	}
	for _, u := range p.upstreams() {
		s.Upstreams = append(s.Upstreams, u.status(now))
	}
	return s
}

// SetClientCert replaces the client certificate presented to upstream i
// (in configuration order) from the next connection on; nil: none.
// SetLinkOutOfLimits records the link verdict of the upstream at addr:
// out of limits, it is tried only after the upstreams within them. It
// reports whether addr is an upstream.
func (p *Proxy) SetLinkOutOfLimits(addr string, out bool) bool {
	for _, u := range p.upstreams() {
		if u.addr == addr {
			if u.outOfLimits.Swap(out) != out {
				p.log.Info("proxy: upstream link verdict", "upstream", addr, "out_of_limits", out)
			}
			return true
		}
	}
	return false
}

func (p *Proxy) SetClientCert(i int, c *tls.Certificate) error {
	p.upsMu.Lock()
	defer p.upsMu.Unlock()
	ups := p.upstreams()
	if i < 0 || i >= len(ups) {
		return fmt.Errorf("proxy: no upstream %d", i)
	}
	ups[i].cert.Store(c)
	ups[i].sessions.reset() // resumed sessions would keep the old identity
	return nil
}

func (p *Proxy) upstreams() []*upstream { return *p.ups.Load() }

// SetUpstreams replaces the central servers (a reload): an upstream whose
// address and pins are unchanged keeps its state (health, ejection,
// relays, resumable sessions); new ones start healthy; relays to a
// removed one go on to their end.
func (p *Proxy) SetUpstreams(cfgs []UpstreamConfig) error {
	if len(cfgs) == 0 {
		return errors.New("proxy: at least one upstream is required")
	}
	for i, u := range cfgs {
		if _, _, err := net.SplitHostPort(u.Address); err != nil {
			return fmt.Errorf("proxy: upstreams[%d].address %q: %w", i, u.Address, err)
		}
	}
	p.upsMu.Lock()
	defer p.upsMu.Unlock()
	old := map[string]*upstream{}
	if cur := p.ups.Load(); cur != nil {
		for _, u := range *cur {
			old[u.key] = u
		}
	}
	next := make([]*upstream, 0, len(cfgs))
	for _, c := range cfgs {
		if u, ok := old[upstreamKey(c)]; ok && u.key != "" {
			if !sameCert(u.cert.Load(), c.ClientCert) { // a renewed client certificate
				u.cert.Store(c.ClientCert)
				u.sessions.reset() // resumed sessions would keep the old identity
			}
			next = append(next, u)
			delete(old, u.key) // the same address twice gets two
			continue
		}
		u := newUpstream(c)
		u.tls.CurvePreferences = p.cfg.KeyExchange
		u.dialSeconds = p.m.dial.WithLabelValues(u.addr)
		next = append(next, u)
	}
	p.ups.Store(&next)
	for _, u := range old {
		if !slices.ContainsFunc(next, func(n *upstream) bool { return n.addr == u.addr }) {
			p.m.dial.DeleteLabelValues(u.addr) // removed: its series goes
		}
	}
	return nil
}

func sameCert(a, b *tls.Certificate) bool {
	switch {
	case a == nil || b == nil:
		return a == b
	case len(a.Certificate) == 0 || len(b.Certificate) == 0:
		return len(a.Certificate) == len(b.Certificate)
	}
	return bytes.Equal(a.Certificate[0], b.Certificate[0])
}

// SetLimits changes the connection limit and the per-source rate
// (negative: off) for the connections that arrive from now on.
func (p *Proxy) SetLimits(maxConnections int, sourceRate float64) {
	p.maxConns.Store(int64(cmp.Or(maxConnections, DefaultMaxConnections)))
	p.source.Store(ratelimit.New(cmp.Or(sourceRate, DefaultSourceRate)))
}

// Ready reports whether at least one upstream is not ejected.
func (p *Proxy) Ready() bool {
	now := time.Now()
	for _, u := range p.upstreams() {
		if !u.ejected(now) {
			return true
		}
	}
	return false
}

// Shutdown stops accepting, lets relays finish until ctx ends, then
// closes the rest. It returns ctx's error if relays had to be cut.
func (p *Proxy) Shutdown(ctx context.Context) error {
	p.StopAccepting()
	p.loopsWG.Wait() // no admit after this: relaysWG only goes down
	idle := make(chan struct{})
	go func() { p.relaysWG.Wait(); close(idle) }() // ends when the relays do, at the latest after closeAll
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		p.closeAll()
		<-idle
		return ctx.Err()
	}
}

// Close stops at once. It is idempotent.
func (p *Proxy) Close() error {
	p.StopAccepting()
	p.loopsWG.Wait()
	p.closeAll()
	p.relaysWG.Wait()
	return nil
}

// StopAccepting closes the listeners and lets Serve return; relays in
// flight go on until Shutdown or Close. A gateway handing its listening
// sockets to a new process (an upgrade) stops here and keeps relaying.
func (p *Proxy) StopAccepting() {
	p.closeOnce.Do(func() { close(p.done) })
	p.mu.Lock()
	p.closing = true
	for ln := range p.listeners {
		ln.Close()
	}
	p.mu.Unlock()
}

func (p *Proxy) closeAll() {
	p.mu.Lock()
	p.cut = true
	for c := range p.live {
		c.Close()
	}
	p.mu.Unlock()
}
