// Package gateway assembles one dpgate node from its configuration: the
// store, the gateway's certificate, the agent allow-list, metrics, and a
// list of parts, each built on its sockets and stopped in reverse: the
// admin API, the cluster, DNS, the uplink measurement, the proxy, the
// push server with its routing between nodes, and the wake-up service.
// cmd/dpgate calls Listen (or ListenFrom), New, Start, then Shutdown.
//
// Files: gateway.go the node, its sockets and its lifecycle; one file per
// part (cluster.go with DNS, link.go, proxy.go, push.go, wake.go), each
// with its builder and admin routes; upgrade.go the handover to a new
// process.
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
	"slices"
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
	started     time.Time

	// The parts New built; nil (or empty) where the configuration leaves
	// one out.
	proxy   *proxy.Proxy     // nil while no upstream is configured
	push    *push.Server     // nil when push.listen is off
	cluster *cluster.Cluster // nil without cluster.bind
	router  *cluster.Router  // push routing between nodes; nil without a cluster or push
	wake    *wake.Service    // nil when push is off
	links   []*link.Monitor  // measured uplinks
	// parts are the same in the order New built them: Start starts them
	// in that order, Shutdown and Close stop them in reverse.
	parts []part

	pushAddr  string         // where the push server listens (TCP); "" when it does not
	pushUDP   net.PacketConn // its QUIC socket, closed with the store
	adminAddr string
	dnsAddr   string
	// The UDP listeners' addresses, for tests: wake requests, shutdown
	// notices and the STAMP reflector ("" when off).
	wakeAddr, shutdownAddr, reflectorAddr string
	draining                              atomic.Bool
	// handedOver: Handover ran; the store, cluster and router are closed.
	handedOver   atomic.Bool
	upgrade      atomic.Pointer[UpgradeStatus] // last upgrade; nil: none
	startUpgrade func() error                  // Options.Upgrade
	wg           sync.WaitGroup                // serve loops
	wakes        sync.WaitGroup                // wake-ups of offline devices a push started
	errc         chan error                    // first fatal serve error; buffered
	closeDB      sync.Once
}

// part is one piece of a node as New built it (the store, the admin API,
// the cluster, DNS, the uplink measurement, the proxy, the push server
// with its routing, the wake-up service): what Start runs, in the order
// built, and how it stops, in reverse.
type part struct {
	name string
	// start runs first, in Start (nil: nothing to start); an error is
	// fatal, reported on Done.
	start func() error
	// serve are its serve loops, each on its own goroutine; each returns
	// when Shutdown or Close closes its socket.
	serve []func() error
	// shutdown stops it gracefully within ctx (nil: close does).
	shutdown func(ctx context.Context) error
	// close stops it at once; it may run more than once.
	close func() error
}

func (g *Gateway) add(p part) { g.parts = append(g.parts, p) }

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

// New builds a gateway on the sockets ls (from Listen or ListenFrom): it
// loads (or on first start generates) the certificate, opens the store
// and builds every part the configuration asks for, but serves nothing
// until Start. New owns ls: on an error it closes what it built, in
// reverse, and ls.
func New(cfg *config.Config, ls Listeners, opts Options) (_ *Gateway, err error) {
	g := &Gateway{cfg: cfg, log: opts.Logger, errc: make(chan error, 1), startUpgrade: opts.Upgrade,
		keyExchange: tlsconf.KeyExchange(*cfg.TLS.PostQuantum)}
	if g.log == nil {
		g.log = slog.Default()
	}
	defer func() {
		if err != nil {
			g.Close()
			ls.Close()
		}
	}()
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
	g.pushUDP = ls.PushUDP
	g.add(part{name: "store", close: g.closeStore})
	g.storeMetrics()
	if g.allow, err = tlsconf.NewAllowList(g.db); err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	g.newAdmin(token, ls)
	// In this order, each after what it uses: Start starts them so, and
	// Shutdown stops them in reverse (the push agents drain first, the
	// queues are handed over before the cluster is left).
	for _, build := range []func(Listeners) error{g.newCluster, g.newDNS, g.newLinks, g.newProxy, g.newPush, g.newWake} {
		if err := build(ls); err != nil {
			return nil, err
		}
	}
	return g, nil
}

// newAdmin builds the admin API and its gateway-wide routes; each other
// part adds its own routes as it is built.
func (g *Gateway) newAdmin(token string, ls Listeners) {
	g.admin = admin.New(admin.Config{Token: token, Logger: g.log})
	g.routes()
	p := part{name: "admin",
		shutdown: func(ctx context.Context) error {
			if err := g.admin.Shutdown(ctx); err != nil {
				g.admin.Close()
				return err
			}
			return nil
		},
		close: g.admin.Close,
	}
	if ln := ls.Admin; ln != nil {
		g.adminAddr = ln.Addr().String()
		p.serve = append(p.serve, func() error {
			g.log.Info("admin API listening", "addr", ln.Addr().String())
			return g.admin.Serve(ln)
		})
	}
	if ln := ls.AdminSocket; ln != nil {
		p.serve = append(p.serve, func() error {
			g.log.Info("admin API listening", "socket", ln.Addr().String())
			return g.admin.Serve(ln)
		})
	}
	g.add(p)
}

// closeAll closes sockets (for parts whose serve loops end when their
// sockets close).
func closeAll(cs ...io.Closer) func() error {
	return func() error {
		for _, c := range cs {
			c.Close() // an error here (closed before) changes nothing
		}
		return nil
	}
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
	ClusterTCP  net.Listener   // gossip streams (cluster.bind); nil: no cluster
	ClusterUDP  net.PacketConn // gossip packets, the same port
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
	if cfg.Cluster.Bind != "" {
		open := paired(net.Listen, func(ln net.Listener) string { return ln.Addr().String() }, "udp")
		if ls.ClusterTCP, err = listen("cluster.bind (TCP)", "tcp", cfg.Cluster.Bind, open); err != nil {
			return ls, err
		}
		if ls.ClusterUDP, err = listenPacket("cluster.bind (UDP)", ls.ClusterTCP.Addr().String()); err != nil {
			return ls, err
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
	for _, ln := range []net.Listener{ls.Admin, ls.AdminSocket, ls.Proxy, ls.Push, ls.DNSTCP, ls.ClusterTCP} {
		if ln != nil {
			ln.Close()
		}
	}
	if ls.Reflector != nil {
		ls.Reflector.Close()
	}
	for _, pc := range []net.PacketConn{ls.PushUDP, ls.DNSUDP, ls.WakeUDP, ls.ShutdownUDP, ls.ClusterUDP} {
		if pc != nil {
			pc.Close()
		}
	}
}

// Start starts every part, in the order New built them, and serves on
// their sockets in the background. A fatal error is reported on Done.
func (g *Gateway) Start() {
	g.started = time.Now()
	g.log.Info("dpgate starting", "node", g.cfg.Node.Name, "version", Version().Version,
		"data_dir", g.cfg.Node.DataDir, "pin", g.id.Pin(), "agent_certs", g.allow.Len())
	for _, p := range g.parts {
		if p.start != nil {
			if err := p.start(); err != nil {
				g.fail(fmt.Errorf("gateway: %s: %w", p.name, err))
				return
			}
		}
		for _, serve := range p.serve {
			g.goServe(p.name, serve)
		}
	}
}

// fail reports the first fatal error on Done.
func (g *Gateway) fail(err error) {
	select {
	case g.errc <- err:
	default:
	}
}

// goServe runs a serve loop owned by g.wg; it exits when its listener is
// closed by Shutdown or Close.
func (g *Gateway) goServe(name string, serve func() error) {
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		if err := serve(); err != nil {
			g.fail(fmt.Errorf("gateway: %s: %w", name, err))
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

// Shutdown stops the parts gracefully, in the reverse of the order New
// built them, within ctx: the push agents are told to reconnect elsewhere
// and the queues left here go to the nodes that keep them from now on,
// the proxy drains its relays, the cluster is left, and the admin API goes
// last so /healthz answers during the drain; then the store closes.
func (g *Gateway) Shutdown(ctx context.Context) error {
	// Peers stop sending agents here once they see the flag (gossiped
	// within a second).
	g.draining.Store(true)
	var errs []error
	for _, p := range slices.Backward(g.parts) {
		stop := p.close
		if p.shutdown != nil {
			stop = func() error { return p.shutdown(ctx) }
		}
		if err := stop(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", p.name, err))
		}
	}
	return errors.Join(errs...)
}

// Close stops every part at once, in reverse. It is idempotent.
func (g *Gateway) Close() error {
	var errs []error
	for _, p := range slices.Backward(g.parts) {
		if err := p.close(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", p.name, err))
		}
	}
	return errors.Join(errs...)
}

// closeStore closes the store once every serve loop has returned and no
// wake-up a push started is still running.
func (g *Gateway) closeStore() error {
	g.wakes.Wait()
	g.wg.Wait()
	var err error
	g.closeDB.Do(func() {
		if g.pushUDP != nil {
			g.pushUDP.Close() // after the push server, which reads it
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
