// Package gateway assembles one dpgate node from its configuration: the
// store, the gateway's certificate, the agent allow-list, metrics, and a
// list of parts, each built on its sockets and stopped in reverse: the
// admin API, the cluster, DNS, the uplink measurement, the proxy, the
// push server with its routing between nodes, and the wake-up service.
// cmd/dpgate calls Listen (or ListenFrom), New, Start, then Shutdown.
//
// Files: gateway.go the node and its lifecycle (New, Start, Shutdown,
// Close, Reload); listen.go its sockets (Listen, ListenFrom); status.go
// /v1/status, the gateway-wide admin routes and the build's version; one
// file per part (cluster.go with DNS, link.go, proxy.go, push.go,
// wake.go), each with its builder and admin routes; devices.go the
// device list and push to all across a cluster; filemodes_*.go what the
// gateway refuses of its files' modes; upgrade.go the handover to a new
// process.
package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/dpgate/dpgate/cluster"
	"github.com/dpgate/dpgate/internal/admin"
	"github.com/dpgate/dpgate/internal/config"
	"github.com/dpgate/dpgate/internal/series"
	"github.com/dpgate/dpgate/internal/store"
	"github.com/dpgate/dpgate/internal/telemetry"
	"github.com/dpgate/dpgate/link"
	"github.com/dpgate/dpgate/proxy"
	"github.com/dpgate/dpgate/push"
	"github.com/dpgate/dpgate/push/queue"
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
	m           *metrics
	admin       *admin.Server
	started     time.Time

	// The parts New built; nil (or empty) where the configuration leaves
	// one out.
	proxy   *proxy.Proxy     // nil while no upstream is configured
	push    *push.Server     // nil when push.listen is off
	queue   *queue.Queue     // push's queue; nil when push.listen is off
	cluster *cluster.Cluster // nil without cluster.bind
	router  *cluster.Router  // push routing between nodes; nil without a cluster or push
	wake    *wake.Service    // nil when push is off
	links   []*link.Monitor  // measured uplinks
	// linkHist is their last hour, for the console's charts.
	linkHist linkHistory
	// parts are the same in the order New built them: Start starts them
	// in that order, Shutdown and Close stop them in reverse.
	parts []part

	pushAddr  string         // where the push server listens (TCP); "" when it does not
	pushUDP   net.PacketConn // its QUIC socket, closed with the store
	adminAddr string
	proxyAddr string
	dnsAddr   string
	// The UDP listeners' addresses, for tests: wake requests, shutdown
	// notices and the STAMP reflector; and the gossip port ("" when off).
	wakeAddr, shutdownAddr, reflectorAddr, clusterAddr string
	draining                                           atomic.Bool
	// handedOver: Handover ran; the store, cluster and router are closed.
	handedOver    atomic.Bool
	upgrade       atomic.Pointer[UpgradeStatus] // last upgrade; nil: none
	startUpgrade  func() error                  // Options.Upgrade
	wg            sync.WaitGroup                // serve loops
	reloadMu      sync.Mutex                    // one reload at a time
	logLevel      *slog.LevelVar                // Options.LogLevel
	routerSweep   time.Duration                 // Options.RouterSweep
	fileLimitOpt  int                           // Options.FileLimit
	conflictAfter time.Duration                 // Options.ConflictAfter
	limits        connLimits                    // the connection limits this process can hold
	wakes         sync.WaitGroup                // wake-ups of offline devices a push started
	errc          chan error                    // first fatal serve error; buffered
	closeDB       sync.Once
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
	// LogLevel, when set, is the level of Logger's handler: a reload sets
	// it from log.level.
	LogLevel *slog.LevelVar
	// RouterSweep is the cluster router's sweep interval; 0 is its
	// default (30 s). Tests lengthen it to see what happens before the
	// sweep repairs it.
	RouterSweep time.Duration
	// ConflictAfter, when set, is how long a node name claimed from two
	// addresses lasts before it is reported (cluster.Config.ConflictAfter;
	// tests shorten the minute).
	ConflictAfter time.Duration
	// FileLimit, when set, stands for the process's open-files limit
	// (RLIMIT_NOFILE) in fitting the connection limits to it.
	FileLimit int
}

// CertFile is the generated gateway certificate inside the data directory.
const CertFile = "gateway.pem"

// New builds a gateway on the sockets ls (from Listen or ListenFrom): it
// loads (or on first start generates) the certificate, opens the store
// and builds every part the configuration asks for, but serves nothing
// until Start. New owns ls: on an error it closes what it built, in
// reverse, and ls.
func New(cfg *config.Config, ls Listeners, opts Options) (_ *Gateway, err error) {
	g := &Gateway{cfg: cfg, log: opts.Logger, errc: make(chan error, 1), startUpgrade: opts.Upgrade, logLevel: opts.LogLevel,
		routerSweep: opts.RouterSweep, fileLimitOpt: opts.FileLimit, conflictAfter: opts.ConflictAfter, keyExchange: tlsconf.KeyExchange(*cfg.TLS.PostQuantum)}
	if g.log == nil {
		g.log = slog.Default()
	}
	defer func() {
		if err != nil {
			g.Close()
			ls.Close()
		}
		if errors.Is(err, syscall.ENOSPC) {
			err = fmt.Errorf("%w: node.data_dir %s is full; the gateway needs room there to start (the push queue's journal alone takes %d MiB, made in full) and to queue pushes: free space, or move node.data_dir", err, filepath.Clean(cfg.Node.DataDir), 2*store.JournalSize>>20)
		}
	}()
	v := Version()
	if g.tel, err = telemetry.New(opts.GlobalMetrics, telemetry.Build{Version: v.Version, Commit: v.Commit, GoVersion: v.GoVersion}); err != nil {
		return nil, fmt.Errorf("gateway: metrics: %w", err)
	}
	g.newMetrics()
	if err := checkDataDir(cfg.Node.DataDir); err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	if err := checkSecretFiles(cfg); err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
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
	g.certLifecycle()
	if g.allow, err = tlsconf.NewAllowList(g.db); err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	g.newAdmin(token, ls)
	g.limits = g.fitConnectionLimits(cfg.Push.MaxConnections, cfg.Proxy.MaxConnections, cfg.ProxyEnabled())
	// In this order, each after what it uses: Start starts them so, and
	// Shutdown stops them in reverse (the push agents drain first, the
	// queues are handed over before the cluster is left).
	for _, build := range []func(Listeners) error{g.newCluster, g.newDNS, g.newLinks, g.newProxy, g.newPush, g.newWake} {
		if err := build(ls); err != nil {
			return nil, err
		}
	}
	g.newMemory()
	return g, nil
}

// newAdmin builds the admin API and its gateway-wide routes; each other
// part adds its own routes as it is built.
func (g *Gateway) newAdmin(token string, ls Listeners) {
	g.admin = admin.New(admin.Config{Token: token, Logger: g.log,
		Refused: func(r *http.Request) { g.authFailed("api", r.RemoteAddr) }})
	g.routes()
	g.mountConsole(token)
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
		tlsOn := !config.IsLoopback(g.cfg.Admin.Listen)
		if tlsOn {
			// Off loopback the API and the console are served over TLS
			// with the gateway's certificate (the CLI pins it).
			cfg := tlsconf.ServerConfig(g.id, nil)
			cfg.CurvePreferences = g.keyExchange
			ln = tls.NewListener(ln, cfg)
		}
		p.serve = append(p.serve, func() error {
			g.log.Info("admin API listening", "addr", ln.Addr().String(), "tls", tlsOn)
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

// certTemplate is what a generated gateway certificate names: the node,
// localhost and the host name, and the loopback addresses.
func (g *Gateway) certTemplate() tlsconf.Template {
	names := []string{g.cfg.Node.Name, "localhost"}
	if h, err := os.Hostname(); err == nil && h != g.cfg.Node.Name {
		names = append(names, h)
	}
	return tlsconf.Template{
		CommonName: g.cfg.Node.Name,
		DNSNames:   names,
		IPs:        []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
}

// loadIdentity loads tls.cert/tls.key, or the generated certificate in the
// data directory, generating it on first start.
func (g *Gateway) loadIdentity() (*tlsconf.Identity, error) {
	certFile, keyFile := g.cfg.TLS.Cert, g.cfg.TLS.Key
	if certFile == "" {
		certFile = g.cfg.InDataDir(CertFile)
		if _, err := g.renewGenerated(certFile); err != nil {
			return nil, err
		}
	}
	id, err := tlsconf.LoadIdentity(certFile, keyFile)
	if errors.Is(err, tlsconf.ErrExpired) {
		return nil, fmt.Errorf("gateway: tls.cert: %w: install a renewed certificate at %s (with the same key, agents keep their pin) and start again, or remove tls.cert to use one the gateway generates and renews itself", err, certFile)
	}
	if err != nil {
		return nil, fmt.Errorf("gateway: tls.cert: %w", err)
	}
	return id, nil
}

// renewBefore: a generated certificate is renewed (same key, same pin)
// when it expires within this, and a configured one is warned about.
const renewBefore = 30 * 24 * time.Hour

// renewGenerated loads the generated certificate in file, creating it on
// first start and renewing it with the same key when it expires within
// renewBefore (or has expired). It reports whether it wrote a new one.
func (g *Gateway) renewGenerated(file string) (bool, error) {
	c, created, renewed, err := tlsconf.LoadOrRenew(file, g.certTemplate(), renewBefore)
	if err != nil {
		hint := ": restore it from a backup of the data directory (every agent pins its key; removing it makes a new key, which every agent would have to pin again)"
		if errors.Is(err, fs.ErrPermission) {
			hint = "" // not damaged: the file's owner or mode
		}
		return false, fmt.Errorf("gateway: certificate %s: %w%s", file, err, hint)
	}
	switch {
	case created:
		g.log.Info("generated gateway certificate", "file", file, "pin", tlsconf.Pin(c.Leaf),
			"not_after", c.Leaf.NotAfter.UTC().Format(time.DateOnly))
	case renewed:
		g.log.Info("renewed the generated gateway certificate with the same key (agents keep their pin)", "file", file,
			"pin", tlsconf.Pin(c.Leaf), "not_after", c.Leaf.NotAfter.UTC().Format(time.DateOnly))
	}
	return created || renewed, nil
}

// checkCertificate runs twice a day: it renews the generated certificate
// when due (and serves the new one), and warns about a configured one
// that expires within renewBefore.
func (g *Gateway) checkCertificate() {
	if g.cfg.TLS.Cert == "" {
		if renewed, err := g.renewGenerated(g.cfg.InDataDir(CertFile)); err != nil {
			g.log.Error("renewing the gateway certificate failed; it is renewed again in 12 h", "err", err)
		} else if renewed {
			if err := g.id.Reload(); err != nil {
				g.log.Error("serving the renewed certificate failed", "err", err)
			}
		}
		return
	}
	if left := time.Until(g.id.Certificate().Leaf.NotAfter); left < renewBefore {
		g.log.Warn("the gateway certificate (tls.cert) expires soon: install a renewed one (with the same key, agents keep their pin) and reload",
			"file", g.cfg.TLS.Cert, "not_after", g.id.Certificate().Leaf.NotAfter.UTC().Format(time.DateOnly), "days_left", int(left.Hours()/24))
	}
}

// Start starts every part, in the order New built them, and serves on
// their sockets in the background. A fatal error is reported on Done.
func (g *Gateway) Start() {
	g.started = time.Now()
	g.log.Info("dpgate starting", "node", g.cfg.Node.Name, "version", Version().Version,
		"data_dir", g.cfg.Node.DataDir, "pin", g.id.Pin(), "agent_certs", g.allow.Len())
	for _, l := range PlatformLimits() {
		g.log.Warn("not on this platform: "+l, "os", runtime.GOOS)
	}
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

// ReloadResult is what a reload did (POST /v1/reload).
type ReloadResult struct {
	// Applied lists the configuration keys whose new values are in use.
	Applied []string `json:"applied"`
	// RestartNeeded lists the keys that changed in the file but apply only
	// after a restart (or "dpgate upgrade", which keeps every connection).
	RestartNeeded []string `json:"restart_needed,omitempty"`
}

// Reload re-reads the configuration file and every file it names, and
// applies what can change live: the certificates, the allow-list, the
// token keys, the gossip keys, the proxy's upstreams (added, removed, pins) and its
// validation of agent certificates, the connection limits and per-source
// rates, the log level. New connections use them; established ones are
// untouched. A key that needs a restart is named in the result and the
// log. On any error nothing changes.
func (g *Gateway) Reload() error {
	_, err := g.reload()
	return err
}

func (g *Gateway) reload() (ReloadResult, error) {
	g.reloadMu.Lock()
	defer g.reloadMu.Unlock()
	res := ReloadResult{Applied: []string{}}
	fail := func(err error) (ReloadResult, error) {
		g.log.Error("reload failed; keeping the previous settings", "err", err)
		g.m.reloaded(err)
		return res, err
	}
	next := g.cfg
	if file := g.cfg.File(); file != "" {
		var err error
		if next, err = config.Load(file); err != nil {
			return fail(err)
		}
		if err := CheckFiles(next); err != nil {
			return fail(err)
		}
	}
	var errs []error
	if err := g.id.Reload(); err != nil {
		errs = append(errs, err)
	}
	if err := g.allow.Reload(); err != nil {
		errs = append(errs, err)
	}
	var upstreams []proxy.UpstreamConfig
	if g.proxy != nil && next.ProxyEnabled() {
		var err error
		if upstreams, err = upstreamConfigs(next); err != nil {
			errs = append(errs, err)
		}
	}
	var tokenKeys [][]byte
	if g.push != nil && g.cfg.Push.Auth == push.AuthToken {
		keys, err := TokenKeys(next)
		if err != nil {
			errs = append(errs, err)
		}
		tokenKeys = keys
	}
	var gossipKeys [][]byte
	if g.cluster != nil {
		keys, err := clusterKeys(next)
		if err != nil {
			errs = append(errs, err)
		}
		gossipKeys = keys
	}
	if err := errors.Join(errs...); err != nil {
		return fail(err)
	}
	// Checked: apply.
	old := *g.cfg
	limits := g.fitConnectionLimits(next.Push.MaxConnections, next.Proxy.MaxConnections, g.proxy != nil)
	g.limits = limits
	res.Applied = append(res.Applied, "tls.cert", "agent allow-list")
	if tokenKeys != nil {
		g.push.SetTokenKeys(tokenKeys) // checked by TokenKeys
		res.Applied = append(res.Applied, "push.token_key_file")
	}
	if upstreams != nil {
		if err := g.proxy.SetUpstreams(upstreams); err != nil {
			return fail(err)
		}
		g.cfg.Proxy.Upstreams = next.Proxy.Upstreams
		res.Applied = append(res.Applied, "proxy.upstreams")
		if next.Proxy.ValidateAgentCerts != old.Proxy.ValidateAgentCerts {
			g.setValidateAgentCerts(next.Proxy.ValidateAgentCerts)
			g.cfg.Proxy.ValidateAgentCerts = next.Proxy.ValidateAgentCerts
		}
		g.proxy.SetLimits(limits.proxy, next.Proxy.SourceRate)
		g.cfg.Proxy.MaxConnections, g.cfg.Proxy.SourceRate = next.Proxy.MaxConnections, next.Proxy.SourceRate
		res.Applied = append(res.Applied, "proxy.validate_agent_certs", "proxy.max_connections", "proxy.source_rate")
	}
	if gossipKeys != nil {
		if err := g.cluster.SetSecretKeys(gossipKeys); err != nil { // checked by clusterKeys: after what can fail
			return fail(err)
		}
		g.cfg.Cluster.SecretKeyFile = next.Cluster.SecretKeyFile
		res.Applied = append(res.Applied, "cluster.secret_key_file")
	}
	if g.push != nil {
		g.push.SetLimits(limits.push, next.Push.SourceRate)
		g.cfg.Push.MaxConnections, g.cfg.Push.SourceRate = next.Push.MaxConnections, next.Push.SourceRate
		res.Applied = append(res.Applied, "push.max_connections", "push.source_rate")
	}
	if g.logLevel != nil && next.Log.Level != old.Log.Level {
		var l slog.Level
		l.UnmarshalText([]byte(next.Log.Level)) // validated by config
		g.logLevel.Set(l)
		g.cfg.Log.Level = next.Log.Level
	}
	if g.logLevel != nil {
		res.Applied = append(res.Applied, "log.level")
	}
	res.RestartNeeded = changedKeys(g.cfg, next)
	g.m.reloaded(nil)
	g.log.Info("reloaded", "pin", g.id.Pin(), "agent_certs", g.allow.Len(), "token_keys", len(tokenKeys), "gossip_keys", len(gossipKeys),
		"upstreams", len(g.cfg.Proxy.Upstreams), "restart_needed", res.RestartNeeded)
	if len(res.RestartNeeded) > 0 {
		g.log.Warn("reload: these keys changed but apply only after a restart or dpgate upgrade", "keys", res.RestartNeeded)
	}
	return res, nil
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
		if g.queue != nil {
			err = g.queue.Close() // its journal into the store
		}
		err = errors.Join(err, g.db.Close())
	})
	return err
}

// Identity is the gateway's certificate.
func (g *Gateway) Identity() *tlsconf.Identity { return g.id }

// AllowList is the agent certificate allow-list.
func (g *Gateway) AllowList() *tlsconf.AllowList { return g.allow }

// Telemetry is the gateway's metrics.
func (g *Gateway) Telemetry() *telemetry.Telemetry { return g.tel }

// certLifecycle checks the gateway certificate at start and twice a day
// (checkCertificate), and declares its expiry gauge.
func (g *Gateway) certLifecycle() {
	series.On(g.tel.Registry).GaugeFunc("dpgate_tls_cert_not_after_timestamp_seconds",
		"When the gateway's certificate (the one agents pin) expires, as a Unix time; a generated one is renewed with the same key 30 days before.",
		func() float64 { return float64(g.id.Certificate().Leaf.NotAfter.Unix()) })
	stop := make(chan struct{})
	var once sync.Once
	g.add(part{name: "certificate",
		start: func() error {
			g.checkCertificate()
			g.wg.Add(1)
			go func() { // ends when the part closes
				defer g.wg.Done()
				t := time.NewTicker(certCheckEvery)
				defer t.Stop()
				for {
					select {
					case <-stop:
						return
					case <-t.C:
						g.checkCertificate()
					}
				}
			}()
			return nil
		},
		close: func() error { once.Do(func() { close(stop) }); return nil },
	})
}

// certCheckEvery is how often the certificate is checked; tests shorten it.
var certCheckEvery = 12 * time.Hour
