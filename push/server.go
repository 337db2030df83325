// Package push is dpgate's push service on port 13295: agents hold one
// persistent connection (TLS over TCP, or QUIC on UDP with the same
// protocol on one bidirectional stream) and the management server's
// pushes reach them in milliseconds, at least once.
//
// Pieces: push/wire is the wire format (docs/PROTOCOL.md) and the HMAC
// device tokens, all an agent needs; push/queue the durable per-device
// queue on bbolt (a push is fsynced before the API answers, removed on
// ACK, expired after its TTL) and the device table. Here: config.go the
// settings and their defaults; accept.go the TCP accept path, limits and
// authentication; quic.go the QUIC listener; session.go one agent's
// session from WELCOME to its end; deliver.go pushes in (the API, copies
// from other nodes) and ACKs out; status.go what the admin API shows;
// this file the server's life: New, background work, Shutdown and Close.
// The agent side is push/client, which depends on push/wire alone.
package push

import (
	"cmp"
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"maps"
	mrand "math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"golang.org/x/time/rate"

	"github.com/dpgate/dpgate/internal/pending"
	"github.com/dpgate/dpgate/internal/ratelimit"
	"github.com/dpgate/dpgate/push/queue"
	"github.com/dpgate/dpgate/push/wire"
	"github.com/dpgate/dpgate/tlsconf"
)

// Server is the push server. It does not listen: Serve and ServeQUIC take
// a listener and a packet connection.
type Server struct {
	cfg   Config
	log   *slog.Logger
	m     *metrics
	queue *queue.Queue
	reg   *queue.Registry
	// cluster is alone{} until SetCluster, which comes before Serve.
	cluster Cluster
	tls     *tls.Config // QUIC and agents
	tcpTLS  *tls.Config // tls, and the TLS of the other Protocols
	accept  *rate.Limiter
	// refusing holds a token per connection being told ERROR 5.
	refusing chan struct{}
	source   atomic.Pointer[ratelimit.PerSource] // SetLimits replaces it
	maxConns atomic.Int64
	// sourceLog keeps the log line for source-rate refusals to one a minute.
	sourceLog rate.Sometimes
	// refusedLog keeps the refused-certificate line to one in 10 s: a
	// host presenting foreign certificates could otherwise write one per
	// handshake.
	refusedLog *ratelimit.Every
	// acceptLog keeps accept failures (out of open files: one every
	// 50 ms) to a line in 10 s.
	acceptLog *ratelimit.Every

	conns atomic.Int64 // connections held, handshakes included
	// handshaking lists the TCP connections counted in conns whose
	// session has not started (handshakes.go).
	handshaking *pending.List
	evictLog    *ratelimit.Every
	unvalidated atomic.Int64 // QUIC handshakes from unvalidated addresses in progress
	tokenKeys   atomic.Pointer[[][]byte]
	// Pushes written and acknowledged since start.
	sent, delivered atomic.Uint64
	opened          atomic.Uint64 // sessions started since the server was built
	wg              sync.WaitGroup
	// stop ends when the server stops accepting (Shutdown or Close): the
	// accept loops' waits end with it, and the server's own loops.
	stop     context.Context
	stopping context.CancelFunc

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
	recent    *wire.RecentIDs // ids acknowledged lately, so a late copy is not delivered again
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
		cfg:         cfg,
		log:         cfg.Logger,
		queue:       cfg.Queue,
		reg:         cfg.Registry,
		tls:         tlsconf.ServerConfig(cfg.Identity, allow, wire.ALPN),
		accept:      rate.NewLimiter(rate.Limit(cfg.AcceptRate), max(1, int(cfg.AcceptRate/4))),
		refusing:    make(chan struct{}, maxRefusing),
		sourceLog:   rate.Sometimes{Interval: time.Minute},
		refusedLog:  ratelimit.NewEvery(10 * time.Second),
		acceptLog:   ratelimit.NewEvery(10 * time.Second),
		evictLog:    ratelimit.NewEvery(10 * time.Second),
		handshaking: pending.New(),
		sessions:    map[string]*session{},
		raw:         map[conn]struct{}{},
		recent:      wire.NewRecentIDs(recentAcks),
		idWaiters:   map[[16]byte][]chan struct{}{},
		cluster:     alone{},
	}
	s.stop, s.stopping = context.WithCancel(context.Background())
	s.m = newMetrics(cfg.Registerer, s)
	s.queue.ObserveWrites(func(d time.Duration) { s.m.journalWrite.Observe(d.Seconds()) })
	s.SetLimits(cfg.MaxConnections, cfg.SourceRate)
	keys := slices.Clone(cfg.TokenKeys)
	s.tokenKeys.Store(&keys)
	s.tls.CurvePreferences = cfg.KeyExchange
	s.tcpTLS = s.tls
	if len(cfg.Protocols) > 0 {
		s.tcpTLS = s.tls.Clone()
		s.tcpTLS.GetConfigForClient = func(hi *tls.ClientHelloInfo) (*tls.Config, error) {
			for _, name := range hi.SupportedProtos {
				if p, ok := cfg.Protocols[name]; ok {
					return p.TLS, nil
				}
			}
			return nil, nil // an agent
		}
	}
	s.wg.Add(1)
	go s.every(cfg.ExpireInterval, s.expire) // exits when the server stops
	if allow != nil {
		s.wg.Add(1)
		go s.watchAllowList(allow) // exits when the server stops
	}
	if cfg.PathInterval > 0 {
		s.wg.Add(1)
		go s.every(cfg.PathInterval, s.samplePaths)
	}
	return s, nil
}

// SetLimits changes the connection limit and the per-source rate
// (negative: off) for the connections that arrive from now on; sessions
// up are untouched.
func (s *Server) SetLimits(maxConnections int, sourceRate float64) {
	s.maxConns.Store(int64(cmp.Or(maxConnections, DefaultMaxConnections)))
	s.source.Store(ratelimit.New(cmp.Or(sourceRate, DefaultSourceRate)))
}

// MaxConnections is the connection limit now (SetLimits changes it).
func (s *Server) MaxConnections() int { return int(s.maxConns.Load()) }

// SetCluster makes the server part of a cluster (in a gateway, its
// cluster.Router). Call it before Serve and ServeQUIC.
func (s *Server) SetCluster(c Cluster) { s.cluster = c }

// every calls fn every d until the server stops (one of the server's
// goroutines: s.wg counts it).
func (s *Server) every(d time.Duration, fn func()) {
	defer s.wg.Done()
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-s.stop.Done():
			return
		case <-t.C:
			fn()
		}
	}
}

// expire drops the pushes past their TTL.
func (s *Server) expire() {
	counts, err := s.queue.Expire()
	if err != nil {
		s.log.Error("push: expiry sweep", "err", err)
		return
	}
	if len(counts) == 0 {
		return
	}
	devices, pushes := slices.Sorted(maps.Keys(counts)), 0
	for _, n := range counts {
		pushes += n
	}
	// One line a sweep: a push to every device of a site, most offline,
	// expires on thousands at once.
	const named = 10
	some := strings.Join(devices[:min(named, len(devices))], " ")
	if len(devices) > named {
		some += fmt.Sprintf(" and %d more", len(devices)-named)
	}
	s.log.Warn("push: pushes expired undelivered (dpgate_push_expired_total counts them)", "devices", len(devices), "pushes", pushes, "device_ids", some)
}

// samplePaths samples every session's path: the smoothed RTT of each into
// dpgate_push_path_rtt_seconds and, per transport, lost over sent
// packets (segments retransmitted over sent for TCP) into
// dpgate_push_path_loss_ratio.
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
		s.m.pathRTT.WithLabelValues(ss.transport).Observe(p.RTT.Seconds())
		t := by[ss.transport]
		if t == nil {
			t = &sums{}
			by[ss.transport] = t
		}
		t.sent, t.lost, t.n = t.sent+p.Sent, t.lost+p.Lost, t.n+1
	}
	for transport, t := range by {
		if t.sent > 0 {
			s.m.pathLoss.WithLabelValues(transport).Set(float64(t.lost) / float64(t.sent))
		}
		s.m.pathSampled.WithLabelValues(transport).Set(float64(t.n))
	}
}

// Shutdown stops accepting, sends DRAIN to every agent (each told to
// reconnect elsewhere after a random delay up to DrainSpread, at most
// half the time ctx leaves, or longer when the accept budget needs it,
// so they do not all arrive at once), waits for them to leave until ctx
// ends, then closes the rest.
func (s *Server) Shutdown(ctx context.Context) error {
	spread := max(s.cfg.DrainSpread, 0)
	if dl, ok := ctx.Deadline(); ok {
		spread = min(spread, time.Until(dl)/2)
	}
	return s.ShutdownAfter(ctx, 0, spread)
}

// ShutdownAfter is Shutdown with the agents told to wait at least after
// before they reconnect (between after and after+spread): an upgrade's
// new process serves only once this one has closed its store, and agents
// that came back sooner would wait in the listen backlog, which
// thousands of them overflow.
func (s *Server) ShutdownAfter(ctx context.Context, after, spread time.Duration) error {
	s.stopAccepting()
	s.mu.Lock()
	list := make([]*session, 0, len(s.sessions))
	for _, ss := range s.sessions {
		list = append(list, ss)
	}
	s.mu.Unlock()
	// Never faster than a server's accept budget takes them back (this
	// one's, as the next process or node has the same): agents beyond it
	// wait in the listen backlog, overflow it and time out.
	spread = max(spread, time.Duration(1.25*float64(len(list))/s.cfg.AcceptRate*float64(time.Second)))
	for _, ss := range list {
		delay := after
		if spread > 0 {
			delay += randDuration(spread)
		}
		ss.send((&wire.Drain{DelayMillis: uint32(delay / time.Millisecond), Reason: "server shutting down"}).Marshal())
	}
	idle := make(chan struct{})
	go func() { s.wg.Wait(); close(idle) }() // ends once every session is gone
	defer s.flushAcks()
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
		ss.c.SetWriteDeadline(deadline) // ends a write or a drainer waiting on this agent by then
		wg.Add(1)
		go func() {
			defer wg.Done()
			ss.sendBy(frame, deadline)
			if ss.wc != nil {
				ss.wc.settle() // what the socket did not take yet, by the deadline
			}
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
	s.flushAcks()
	return nil
}

// flushAcks commits the deletions of the pushes acknowledged last (the
// queue gathers them for queue.AckDelay), so a restart does not deliver
// them again.
func (s *Server) flushAcks() {
	if err := s.queue.Flush(); err != nil {
		s.log.Warn("push: acknowledged pushes will be delivered again after the restart", "err", err)
	}
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
	s.stopping()
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
