// Package gateway assembles one dpgate node from its configuration: the
// store, the gateway's certificate, the agent allow-list, metrics and the
// admin API, and (as they are built) the proxy, push server, cluster and
// wake-up listeners. cmd/dpgate calls New, Listen, Start, then Shutdown.
package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dpgate/dpgate/cluster"
	"github.com/dpgate/dpgate/internal/admin"
	"github.com/dpgate/dpgate/internal/config"
	"github.com/dpgate/dpgate/internal/store"
	"github.com/dpgate/dpgate/internal/telemetry"
	"github.com/dpgate/dpgate/link"
	"github.com/dpgate/dpgate/proxy"
	"github.com/dpgate/dpgate/push"
	"github.com/dpgate/dpgate/tlsconf"
	"github.com/dpgate/dpgate/wake"
)

// Gateway is one running node.
type Gateway struct {
	cfg *config.Config
	log *slog.Logger
	db  *store.DB
	id  *tlsconf.Identity
	// keyExchange are the TLS key exchange groups of every listener and
	// dialer (tls.post_quantum).
	keyExchange []tls.CurveID
	allow       *tlsconf.AllowList
	tel         *telemetry.Telemetry
	admin       *admin.Server
	proxy       *proxy.Proxy // nil while no upstream is configured
	push        *push.Server // nil when push.listen is off
	started     time.Time

	udp       net.PacketConn // push QUIC socket, closed after the push server
	pushAddr  string         // where the push server listens (TCP)
	adminAddr string
	cluster   atomic.Pointer[cluster.Cluster] // nil until Start, or without cluster.bind
	router    atomic.Pointer[cluster.Router]  // push routing between nodes; nil without a cluster
	wake      *wake.Service                   // nil when push is off
	udpClose  []net.PacketConn                // wake listeners, closed at shutdown
	links     []*link.Monitor                 // measured uplinks (started in Start)
	linkStop  context.CancelFunc
	draining  atomic.Bool
	// handedOver: Handover ran; the store, cluster and router are closed.
	handedOver   atomic.Bool
	upgrade      atomic.Pointer[UpgradeStatus] // last upgrade; nil: none
	startUpgrade func() error                  // Options.Upgrade
	dns          []func()                      // close functions of the DNS listeners
	dnsAddr      string
	wg           sync.WaitGroup // serve loops
	wakes        sync.WaitGroup // wake-ups of offline devices a push started
	errc         chan error     // first fatal serve error; buffered
	close        sync.Once
}

// Options are what New needs besides the configuration.
type Options struct {
	Logger *slog.Logger // default slog.Default()
	// GlobalMetrics routes the go-metrics package-level calls (memberlist's)
	// into this gateway's sinks. Set it in the real binary, not in tests
	// that run several gateways in one process.
	GlobalMetrics bool
	// BeforeStore, when set, runs once the certificate and the admin token
	// have loaded, just before the store is opened; an error stops New.
	// An upgraded process waits there for the process it replaces to
	// close the store (see Handover).
	BeforeStore func() error
	// Upgrade, when set, starts an upgrade (POST /v1/upgrade): it
	// returns at once, an error if none can start now.
	Upgrade func() error
}

// CertFile is the generated gateway certificate inside the data directory.
const CertFile = "gateway.pem"

// New builds a gateway: it opens the store and loads (or on first start
// generates) the certificate, but does not listen.
func New(cfg *config.Config, opts Options) (*Gateway, error) {
	g := &Gateway{cfg: cfg, log: opts.Logger, errc: make(chan error, 1), startUpgrade: opts.Upgrade,
		keyExchange: tlsconf.KeyExchange(*cfg.TLS.PostQuantum)}
	if g.log == nil {
		g.log = slog.Default()
	}
	var err error
	if g.tel, err = telemetry.New(opts.GlobalMetrics); err != nil {
		return nil, fmt.Errorf("gateway: metrics: %w", err)
	}
	if g.id, err = g.loadIdentity(); err != nil {
		return nil, err
	}
	token, err := admin.LoadToken(cfg.AdminTokenFile())
	if err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	if opts.BeforeStore != nil {
		if err := opts.BeforeStore(); err != nil {
			return nil, fmt.Errorf("gateway: %w", err)
		}
	}
	if g.db, err = store.Open(cfg.Node.DataDir, store.Options{Logger: g.log}); err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	g.storeMetrics()
	if g.allow, err = tlsconf.NewAllowList(g.db); err != nil {
		g.db.Close()
		return nil, fmt.Errorf("gateway: %w", err)
	}
	if g.proxy, err = g.newProxy(); err != nil {
		g.db.Close()
		return nil, err
	}
	if g.push, err = g.newPush(); err != nil {
		if g.proxy != nil {
			g.proxy.Close()
		}
		g.db.Close()
		return nil, fmt.Errorf("gateway: push: %w", err)
	}
	if g.wake, err = g.newWake(); err != nil {
		if g.push != nil {
			g.push.Close()
		}
		if g.proxy != nil {
			g.proxy.Close()
		}
		g.db.Close()
		return nil, err
	}
	g.admin = admin.New(admin.Config{Token: token, Logger: g.log})
	g.routes()
	return g, nil
}

// loadIdentity loads tls.cert/tls.key, or the generated certificate in the
// data directory, generating it on first start.
func (g *Gateway) loadIdentity() (*tlsconf.Identity, error) {
	certFile, keyFile := g.cfg.TLS.Cert, g.cfg.TLS.Key
	if certFile == "" {
		certFile = g.cfg.InDataDir(CertFile)
		names := []string{g.cfg.Node.Name, "localhost"}
		if h, err := os.Hostname(); err == nil && h != g.cfg.Node.Name {
			names = append(names, h)
		}
		c, created, err := tlsconf.LoadOrCreate(certFile, tlsconf.Template{
			CommonName: g.cfg.Node.Name,
			DNSNames:   names,
			IPs:        []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		}, nil)
		if err != nil {
			return nil, fmt.Errorf("gateway: certificate %s: %w", certFile, err)
		}
		if created {
			g.log.Info("generated gateway certificate", "file", certFile, "pin", tlsconf.Pin(c.Leaf),
				"not_after", c.Leaf.NotAfter.UTC().Format(time.DateOnly))
		}
	}
	id, err := tlsconf.LoadIdentity(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("gateway: tls.cert: %w", err)
	}
	return id, nil
}

// Listeners are the sockets a gateway serves on, opened by Listen or
// handed in by tests.
type Listeners struct {
	Admin       net.Listener   // nil: admin API off
	AdminSocket net.Listener   // admin.socket; nil: off
	Proxy       net.Listener   // nil: proxy off (no upstream)
	Push        net.Listener   // nil: push off
	PushUDP     net.PacketConn // nil: push over QUIC off
	DNSUDP      net.PacketConn // nil: DNS off
	DNSTCP      net.Listener
	WakeUDP     net.PacketConn // wake requests; nil: off
	ShutdownUDP net.PacketConn // agents' shutdown notices; nil: off
	Reflector   *net.UDPConn   // STAMP reflector; nil: off
}

// Sockets hands out listening sockets: a fresh one by calling open, or
// one inherited from the process this one replaces (an upgrade; see
// cloudflare/tableflip's Fds, whose ListenWithCallback and
// ListenPacketWithCallback have these signatures).
type Sockets interface {
	ListenWithCallback(network, addr string, open func(network, addr string) (net.Listener, error)) (net.Listener, error)
	ListenPacketWithCallback(network, addr string, open func(network, addr string) (net.PacketConn, error)) (net.PacketConn, error)
}

// freshSockets opens every socket anew.
type freshSockets struct{}

func (freshSockets) ListenWithCallback(network, addr string, open func(string, string) (net.Listener, error)) (net.Listener, error) {
	return open(network, addr)
}

func (freshSockets) ListenPacketWithCallback(network, addr string, open func(string, string) (net.PacketConn, error)) (net.PacketConn, error) {
	return open(network, addr)
}

// Listen opens the listeners the configuration asks for.
func Listen(cfg *config.Config) (Listeners, error) { return ListenFrom(cfg, freshSockets{}) }

// ListenFrom is Listen taking its sockets from socks, so that a new
// process can serve on the sockets of the one it replaces.
func ListenFrom(cfg *config.Config, socks Sockets) (Listeners, error) {
	var ls Listeners
	var listenPacketWith func(key, addr string, open func(string, string) (net.PacketConn, error)) (net.PacketConn, error)
	// A socket is known by its configuration key and address, so that
	// two keys on port 0 are two sockets, and a changed address a new one.
	// (A Unix socket by its path alone: tableflip unlinks that path when
	// it closes the socket for good.)
	listen := func(key, network, addr string, open func(string, string) (net.Listener, error)) (net.Listener, error) {
		name := key + " " + addr
		if network == "unix" {
			name = addr
		}
		ln, err := socks.ListenWithCallback(network, name, func(string, string) (net.Listener, error) { return open(network, addr) })
		if err != nil {
			ls.Close()
			return nil, fmt.Errorf("gateway: %s: %w", key, err)
		}
		return ln, nil
	}
	listenPacket := func(key, addr string) (net.PacketConn, error) {
		return listenPacketWith(key, addr, net.ListenPacket)
	}
	listenPacketWith = func(key, addr string, open func(string, string) (net.PacketConn, error)) (net.PacketConn, error) {
		pc, err := socks.ListenPacketWithCallback("udp", key+" "+addr, func(string, string) (net.PacketConn, error) { return open("udp", addr) })
		if err != nil {
			ls.Close()
			return nil, fmt.Errorf("gateway: %s: %w", key, err)
		}
		return pc, nil
	}
	var err error
	if config.Enabled(cfg.Admin.Listen) {
		if ls.Admin, err = listen("admin.listen", "tcp", cfg.Admin.Listen, net.Listen); err != nil {
			return ls, err
		}
	}
	if cfg.Admin.Socket != "" {
		open := func(string, string) (net.Listener, error) { return admin.ListenSocket(cfg.Admin.Socket) }
		if ls.AdminSocket, err = listen("admin.socket", "unix", cfg.Admin.Socket, open); err != nil {
			return ls, err
		}
	}
	if cfg.ProxyEnabled() {
		if ls.Proxy, err = listen("proxy.listen", "tcp", cfg.Proxy.Listen, net.Listen); err != nil {
			return ls, err
		}
	}
	if config.Enabled(cfg.Push.Listen) {
		open := net.Listen
		if *cfg.Push.QUIC { // QUIC takes the same port number on UDP
			open = paired(net.Listen, func(ln net.Listener) string { return ln.Addr().String() }, "udp")
		}
		if ls.Push, err = listen("push.listen", "tcp", cfg.Push.Listen, open); err != nil {
			return ls, err
		}
		if *cfg.Push.QUIC {
			// The same port number on UDP: the one TCP got, if it was 0.
			if ls.PushUDP, err = listenPacket("push.listen (QUIC, UDP)", ls.Push.Addr().String()); err != nil {
				return ls, err
			}
		}
		if config.Enabled(cfg.Wake.Listen) {
			if ls.WakeUDP, err = listenPacket("wake.listen", cfg.Wake.Listen); err != nil {
				return ls, err
			}
		}
		if config.Enabled(cfg.Wake.ShutdownListen) {
			if ls.ShutdownUDP, err = listenPacket("wake.shutdown_listen", cfg.Wake.ShutdownListen); err != nil {
				return ls, err
			}
		}
	}
	if cfg.Link.ReflectorListen != "" {
		pc, err := listenPacket("link.reflector_listen", cfg.Link.ReflectorListen)
		if err != nil {
			return ls, err
		}
		var ok bool
		if ls.Reflector, ok = pc.(*net.UDPConn); !ok {
			pc.Close()
			ls.Close()
			return ls, fmt.Errorf("gateway: link.reflector_listen: got a %T, want a UDP socket", pc)
		}
	}
	if cfg.Cluster.DNS.Listen != "" {
		if ls.DNSUDP, err = listenPacketWith("cluster.dns.listen (UDP)", cfg.Cluster.DNS.Listen, paired(net.ListenPacket, func(pc net.PacketConn) string { return pc.LocalAddr().String() }, "tcp")); err != nil {
			return ls, err
		}
		if ls.DNSTCP, err = listen("cluster.dns.listen (TCP)", "tcp", ls.DNSUDP.LocalAddr().String(), net.Listen); err != nil {
			return ls, err
		}
	}
	return ls, nil
}

// paired opens a socket with open; on port 0, one whose number is free
// on the other network too, where a second socket takes the same number
// (QUIC beside TLS, DNS over TCP beside UDP). Without that check the
// second bind failed now and then with "address already in use"
// (TestGatewaysFormACluster).
func paired[S io.Closer](open func(network, addr string) (S, error), local func(S) string, other string) func(network, addr string) (S, error) {
	return func(network, addr string) (S, error) {
		for range 20 {
			s, err := open(network, addr)
			if err != nil || !portZero(addr) || freeOn(other, local(s)) {
				return s, err
			}
			s.Close()
		}
		return open(network, addr)
	}
}

func portZero(addr string) bool {
	_, port, err := net.SplitHostPort(addr)
	return err == nil && port == "0"
}

// freeOn reports whether addr can be bound on network now.
func freeOn(network, addr string) bool {
	var c io.Closer
	var err error
	if network == "udp" {
		c, err = net.ListenPacket(network, addr)
	} else {
		c, err = net.Listen(network, addr)
	}
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// Close closes every listener that is open.
func (ls Listeners) Close() {
	for _, ln := range []net.Listener{ls.Admin, ls.AdminSocket, ls.Proxy, ls.Push, ls.DNSTCP} {
		if ln != nil {
			ln.Close()
		}
	}
	if ls.Reflector != nil {
		ls.Reflector.Close()
	}
	for _, pc := range []net.PacketConn{ls.PushUDP, ls.DNSUDP, ls.WakeUDP, ls.ShutdownUDP} {
		if pc != nil {
			pc.Close()
		}
	}
}

// Start serves on the listeners in the background and joins the cluster.
// A fatal serve error is reported on Done.
func (g *Gateway) Start(ls Listeners) {
	g.started = time.Now()
	g.log.Info("dpgate starting", "node", g.cfg.Node.Name, "version", Version().Version,
		"data_dir", g.cfg.Node.DataDir, "pin", g.id.Pin(), "agent_certs", g.allow.Len())
	if ls.Admin != nil {
		g.adminAddr = ls.Admin.Addr().String()
		g.log.Info("admin API listening", "addr", ls.Admin.Addr().String())
		g.goServe("admin", func() error { return g.admin.Serve(ls.Admin) })
	}
	if ls.AdminSocket != nil {
		g.log.Info("admin API listening", "socket", ls.AdminSocket.Addr().String())
		g.goServe("admin socket", func() error { return g.admin.Serve(ls.AdminSocket) })
	}
	switch {
	case g.proxy == nil:
		g.log.Info("proxy off: no upstream configured")
	case ls.Proxy == nil:
		g.log.Warn("proxy configured but given no listener")
	default:
		g.log.Info("proxy listening", "addr", ls.Proxy.Addr().String(), "upstreams", len(g.cfg.Proxy.Upstreams),
			"balance", g.cfg.Proxy.Balance, "validate_agent_certs", g.cfg.Proxy.ValidateAgentCerts)
		g.goServe("proxy", func() error { return g.proxy.Serve(ls.Proxy) })
	}
	if g.push != nil && ls.Push != nil {
		g.pushAddr = ls.Push.Addr().String()
		g.log.Info("push server listening", "addr", g.pushAddr, "quic", ls.PushUDP != nil, "auth", g.cfg.Push.Auth)
		g.goServe("push", func() error { return g.push.Serve(ls.Push) })
		if ls.PushUDP != nil {
			g.goServe("push (QUIC)", func() error { return g.push.ServeQUIC(ls.PushUDP) })
			g.udp = ls.PushUDP
		}
	}
	if g.wake != nil && ls.WakeUDP != nil {
		g.log.Info("wake requests listening", "addr", ls.WakeUDP.LocalAddr().String())
		g.goServe("wake requests", func() error { return g.wake.ServeRequests(ls.WakeUDP) })
		g.udpClose = append(g.udpClose, ls.WakeUDP)
	}
	if g.wake != nil && ls.ShutdownUDP != nil {
		g.log.Info("shutdown notices listening", "addr", ls.ShutdownUDP.LocalAddr().String())
		g.goServe("shutdown notices", func() error { return g.wake.ServeShutdowns(ls.ShutdownUDP) })
		g.udpClose = append(g.udpClose, ls.ShutdownUDP)
	}
	// Validated keys whose features are not built yet: say so rather than
	// let an administrator believe something listens.
	if ls.Reflector != nil {
		r := &link.Reflector{}
		g.log.Info("STAMP reflector listening", "addr", ls.Reflector.LocalAddr().String())
		g.goServe("link reflector", func() error { return r.Serve(ls.Reflector) })
		g.udpClose = append(g.udpClose, ls.Reflector)
	}
	g.startLinks()
	if err := g.startCluster(); err != nil {
		select {
		case g.errc <- err:
		default:
		}
		return
	}
	if c := g.cluster.Load(); c != nil && ls.DNSUDP != nil {
		d := cluster.NewDNS(c, g.cfg.Cluster.DNS.Domain)
		g.dnsAddr = ls.DNSUDP.LocalAddr().String()
		g.log.Info("DNS listening", "addr", g.dnsAddr, "domain", g.cfg.Cluster.DNS.Domain)
		g.goServe("dns (UDP)", func() error { d.ServeUDP(ls.DNSUDP); return nil })
		g.goServe("dns (TCP)", func() error { d.ServeTCP(ls.DNSTCP); return nil })
		g.dns = append(g.dns, func() { ls.DNSUDP.Close() }, func() { ls.DNSTCP.Close() })
	}
}

// goServe runs a serve loop owned by g.wg; it exits when its listener is
// closed by Shutdown or Close.
func (g *Gateway) goServe(name string, serve func() error) {
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		if err := serve(); err != nil {
			select {
			case g.errc <- fmt.Errorf("gateway: %s: %w", name, err):
			default:
			}
		}
	}()
}

// Done reports the first fatal serve error.
func (g *Gateway) Done() <-chan error { return g.errc }

// Reload re-reads the certificate files and the allow-list. New
// handshakes use the result; established connections are untouched.
func (g *Gateway) Reload() error {
	errs := []error{}
	if err := g.id.Reload(); err != nil {
		errs = append(errs, err)
	}
	if err := g.allow.Reload(); err != nil {
		errs = append(errs, err)
	}
	if err := g.reloadUpstreamCerts(); err != nil {
		errs = append(errs, err)
	}
	var tokenKeys [][]byte
	if g.push != nil && g.cfg.Push.Auth == push.AuthToken {
		keys, err := TokenKeys(g.cfg)
		if err != nil {
			errs = append(errs, err)
		}
		tokenKeys = keys
	}
	err := errors.Join(errs...)
	if err != nil {
		g.log.Error("reload failed; keeping the previous settings", "err", err)
		g.tel.IncrCounter([]string{"reload", "failed"}, 1)
		return err
	}
	if tokenKeys != nil {
		g.push.SetTokenKeys(tokenKeys) // checked by TokenKeys
	}
	g.tel.IncrCounter([]string{"reload", "ok"}, 1)
	g.log.Info("reloaded", "pin", g.id.Pin(), "agent_certs", g.allow.Len(), "token_keys", len(tokenKeys))
	return nil
}

// Shutdown stops accepting, drains relays until ctx ends, and closes the
// store. The admin API goes last so /healthz answers during the drain.
func (g *Gateway) Shutdown(ctx context.Context) error {
	var errs []error
	// Peers stop sending agents here once they see the flag (gossiped
	// within a second); the cluster itself is left after the drain.
	g.draining.Store(true)
	if g.push != nil {
		// Agents are told to reconnect elsewhere, spread over a few seconds
		// so the other nodes do not get them all at once.
		spread := 5 * time.Second
		if dl, ok := ctx.Deadline(); ok {
			spread = min(spread, time.Until(dl)/2)
		}
		if err := g.push.Shutdown(ctx, spread); err != nil {
			errs = append(errs, fmt.Errorf("push drain: %w", err))
		}
	}
	if g.proxy != nil {
		if err := g.proxy.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("proxy drain: %w", err))
		}
	}
	if r := g.router.Load(); r != nil && !g.handedOver.Load() {
		// The agents are gone; what is still queued here goes to the nodes
		// that keep it from now on. (After a Handover the next process
		// keeps the queues.)
		if err := r.Handoff(ctx); err != nil {
			errs = append(errs, fmt.Errorf("push handoff: %w", err))
		}
		r.Close()
	}
	if err := g.leaveCluster(); err != nil {
		errs = append(errs, fmt.Errorf("cluster leave: %w", err))
	}
	g.stopListening()
	if err := g.admin.Shutdown(ctx); err != nil {
		g.admin.Close()
		errs = append(errs, fmt.Errorf("admin: %w", err))
	}
	g.wakes.Wait() // no request starts another now
	g.wg.Wait()
	return errors.Join(append(errs, g.closeStore())...)
}

// Close stops everything at once. It is idempotent.
func (g *Gateway) Close() error {
	if r := g.router.Load(); r != nil {
		r.Close()
	}
	if c := g.cluster.Load(); c != nil {
		c.Close()
	}
	g.stopListening()
	if g.push != nil {
		g.push.Close()
	}
	if g.proxy != nil {
		g.proxy.Close()
	}
	g.admin.Close()
	g.wakes.Wait()
	g.wg.Wait()
	return g.closeStore()
}

// stopListening closes the DNS and UDP listeners and stops measuring
// the uplinks. It may run more than once.
func (g *Gateway) stopListening() {
	for _, f := range g.dns {
		f()
	}
	for _, pc := range g.udpClose {
		pc.Close()
	}
	g.stopLinks()
}

func (g *Gateway) closeStore() error {
	var err error
	g.close.Do(func() {
		if g.udp != nil {
			g.udp.Close()
		}
		err = g.db.Close()
	})
	return err
}

// storeMetrics declares the store's damage counters, present (at 0) from
// the start.
func (g *Gateway) storeMetrics() {
	g.tel.Registry.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "dpgate_store_corrupt_records_total",
			Help: "Stored records that failed their checksum since start: skipped, kept aside in the store, never delivered or used.",
		}, func() float64 { return float64(g.db.Stats().CorruptRecords) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "dpgate_store_failures_total",
			Help: "Store calls since start that hit damaged pages and failed (each alone; the gateway goes on).",
		}, func() float64 { return float64(g.db.Stats().Failures) }),
	)
}

// Identity is the gateway's certificate.
func (g *Gateway) Identity() *tlsconf.Identity { return g.id }

// AllowList is the agent certificate allow-list.
func (g *Gateway) AllowList() *tlsconf.AllowList { return g.allow }

// Status is the reply of GET /v1/status.
type Status struct {
	Node       string    `json:"node"`
	Version    string    `json:"version"`
	Started    time.Time `json:"started"`
	Uptime     string    `json:"uptime"`
	Pin        string    `json:"pin"`
	CertExpiry time.Time `json:"cert_not_after"`
	AgentCerts int       `json:"agent_certs"`
	// Store counts damage met since start: records that failed their
	// checksum (kept aside, never used) and calls that hit damaged pages.
	Store store.Stats `json:"store"`
	// Process figures, for load tests and capacity planning: resident
	// memory (VmRSS), goroutines, open files.
	RSSBytes   int64 `json:"rss_bytes"`
	Goroutines int   `json:"goroutines"`
	OpenFiles  int   `json:"open_files"`
	// Proxy is null while no upstream is configured.
	Proxy *proxy.Status `json:"proxy"`
	// Push is null while the push server is off.
	Push *PushStatus `json:"push"`
	// Cluster lists the live nodes; null without cluster.bind.
	Cluster []ClusterMember `json:"cluster"`
	// Links are the measured uplinks (proxy.upstreams[].probe).
	Links []link.Status `json:"links"`
	// PID is this process's id; it changes with an upgrade.
	PID int `json:"pid"`
	// Upgrade is the last upgrade this process tried; null: none.
	Upgrade *UpgradeStatus `json:"upgrade,omitempty"`
}

// PushStatus is the push server's part of /v1/status.
type PushStatus struct {
	Sessions int    `json:"sessions"`
	Devices  int    `json:"known_devices"`
	Expired  uint64 `json:"expired"`
}

func (g *Gateway) status() Status {
	leaf := g.id.Certificate().Leaf
	var ps *proxy.Status
	if g.proxy != nil {
		s := g.proxy.Status()
		ps = &s
	}
	var us *PushStatus
	if g.push != nil {
		us = &PushStatus{Sessions: g.push.Sessions(), Devices: len(g.push.KnownDevices()), Expired: g.push.Expired()}
	}
	return Status{
		Cluster:    g.clusterStatus(),
		Links:      g.linkStatus(),
		RSSBytes:   processRSS(),
		Goroutines: runtime.NumGoroutine(),
		OpenFiles:  openFiles(),
		Push:       us,
		Node:       g.cfg.Node.Name,
		Version:    Version().Version,
		Started:    g.started.UTC(),
		Uptime:     time.Since(g.started).Round(time.Second).String(),
		Pin:        tlsconf.Pin(leaf),
		CertExpiry: leaf.NotAfter.UTC(),
		AgentCerts: g.allow.Len(),
		Store:      g.db.Stats(),
		Proxy:      ps,
		PID:        pid,
		Upgrade:    g.upgrade.Load(),
	}
}

func (g *Gateway) routes() {
	a := g.admin
	a.HandleJSON("GET /healthz", func(*http.Request) (int, any, error) {
		if g.proxy != nil && !g.proxy.Ready() {
			return http.StatusServiceUnavailable, map[string]string{"status": "not ready", "reason": "no healthy upstream"}, nil
		}
		return http.StatusOK, map[string]string{"status": "ok"}, nil
	})
	a.Handle("GET /metrics", g.tel.Handler())
	a.HandleJSON("GET /v1/metrics", func(r *http.Request) (int, any, error) {
		v, err := g.tel.Inmem.DisplayMetrics(nil, r)
		return http.StatusOK, v, err
	})
	a.HandleJSON("GET /v1/status", func(*http.Request) (int, any, error) {
		return http.StatusOK, g.status(), nil
	})
	a.HandleJSON("POST /v1/reload", func(*http.Request) (int, any, error) {
		if err := g.Reload(); err != nil {
			return 0, nil, admin.Error(http.StatusUnprocessableEntity, err)
		}
		return http.StatusOK, g.status(), nil
	})
	a.HandleJSON("POST /v1/upgrade", func(*http.Request) (int, any, error) {
		if g.startUpgrade == nil {
			return 0, nil, admin.Error(http.StatusNotImplemented, errors.New("this process cannot upgrade itself (dpgate serve does, on Linux and other Unix systems)"))
		}
		if err := g.startUpgrade(); err != nil {
			return 0, nil, admin.Error(http.StatusConflict, err)
		}
		return http.StatusAccepted, map[string]any{"status": "upgrading", "pid": pid}, nil
	})
	a.HandleJSON("GET /v1/store/check", func(*http.Request) (int, any, error) {
		return http.StatusOK, g.db.Inspect(), nil
	})
	a.MountCerts(g.allow)
	if g.push != nil {
		g.pushRoutes()
	}
	g.linkRoutes()
}

// BuildInfo says which build this is.
type BuildInfo struct {
	Version   string `json:"version"`
	Commit    string `json:"commit"`
	GoVersion string `json:"go"`
}

// Set by the linker: -ldflags "-X github.com/dpgate/dpgate/internal/gateway.version=v1.2.3".
var version, commit string

// Version returns the build's version, commit and Go version.
func Version() BuildInfo {
	b := BuildInfo{Version: version, Commit: commit}
	if info, ok := debug.ReadBuildInfo(); ok {
		b.GoVersion = info.GoVersion
		if b.Version == "" && info.Main.Version != "" && info.Main.Version != "(devel)" {
			b.Version = info.Main.Version
		}
		for _, s := range info.Settings {
			if s.Key == "vcs.revision" && b.Commit == "" {
				b.Commit = s.Value
			}
		}
	}
	if b.Version == "" {
		b.Version = "devel"
	}
	if b.Commit == "" {
		b.Commit = "unknown"
	}
	return b
}

// Telemetry is the gateway's metrics.
func (g *Gateway) Telemetry() *telemetry.Telemetry { return g.tel }

// processRSS is this process's resident memory (VmRSS), 0 if unknown.
func processRSS() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb * 1024
		}
	}
	return 0
}

// openFiles counts this process's open file descriptors, -1 if unknown.
func openFiles() int {
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	return len(es)
}
