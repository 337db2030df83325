// Package config reads the dpgate YAML configuration file.
//
// The file is strict: an unknown key, a value of the wrong type or a value
// out of range is an error that names the key and its line. Every field's
// zero value means its default; Load fills the defaults in and validates the
// result, so the rest of dpgate works on a complete, checked Config.
//
// The key names are part of dpgate's user-facing contract (see DESIGN.md);
// configs/dpgate.yaml documents every one of them.
package config

import (
	"cmp"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/dpgate/dpgate/cluster"
	"github.com/dpgate/dpgate/link"
	"github.com/dpgate/dpgate/proxy"
	"github.com/dpgate/dpgate/push"
	"github.com/dpgate/dpgate/wake"
)

// Config is the whole configuration file.
type Config struct {
	Node    Node    `yaml:"node"`
	Log     Log     `yaml:"log"`
	Admin   Admin   `yaml:"admin"`
	TLS     TLS     `yaml:"tls"`
	Proxy   Proxy   `yaml:"proxy"`
	Push    Push    `yaml:"push"`
	Wake    Wake    `yaml:"wake"`
	Link    Link    `yaml:"link"`
	Cluster Cluster `yaml:"cluster"`

	// lines maps a key path ("proxy.upstreams[0].address") to the line it
	// was read from, so validation errors can point at the file.
	lines map[string]int
	file  string
}

// Off disables a listener that is on by default.
const Off = "off"

// Node identifies this gateway.
type Node struct {
	// Name of this node in the cluster and in logs. Default: the host name.
	Name string `yaml:"name"`
	// DataDir holds the store, the generated certificates and the agent CA.
	// Default: $STATE_DIRECTORY (set by systemd's StateDirectory=), else
	// /var/lib/dpgate as root, else ~/.local/state/dpgate.
	DataDir string `yaml:"data_dir"`
}

// Log configures log/slog output on standard error.
type Log struct {
	// Level is debug, info, warn or error. Default: info.
	Level string `yaml:"level"`
	// Format is text or json. Default: text.
	Format string `yaml:"format"`
}

// Admin configures the admin HTTP API.
type Admin struct {
	// Listen is the API's address. Default: 127.0.0.1:13290. A non-loopback
	// address requires TokenFile.
	Listen string `yaml:"listen"`
	// TokenFile holds the bearer token every route but /healthz requires,
	// on loopback too. Default: data_dir/admin.token, created with a random
	// token (mode 0600) on first start; see AdminTokenFile.
	TokenFile string `yaml:"token_file"`
	// Socket is a Unix socket for the API (mode 0600), like HAProxy's stats
	// socket: requests over it need no token, the file's permissions (and
	// on Linux the peer's uid: this user or root) are the credential; the
	// CLI uses it when set. Default: off; e.g. /run/dpgate/admin.sock.
	Socket string `yaml:"socket"`
}

// AdminTokenFileName is the admin token's file in the data directory when
// admin.token_file is not set.
const AdminTokenFileName = "admin.token"

// AdminTokenFile is the file holding the admin API's bearer token, and
// whether it is the generated default (created on first start) rather than
// a file the operator named.
func (c *Config) AdminTokenFile() (file string, generated bool) {
	if c.Admin.TokenFile != "" {
		return c.Admin.TokenFile, false
	}
	return c.InDataDir(AdminTokenFileName), true
}

// TLS names the gateway's own certificate, the one agents pin.
type TLS struct {
	// Cert is a PEM file with the certificate, and the key too when Key is
	// empty. Default: data_dir/gateway.pem, generated on first start.
	Cert string `yaml:"cert"`
	// Key is a PEM file with the private key. Default: read from Cert.
	Key string `yaml:"key"`
	// PostQuantum offers the hybrid X25519MLKEM768 key exchange (Go's
	// default) to agents and upstreams. Peers without it (OpenSSL 3.0
	// and older) negotiate X25519 either way. false limits dpgate to
	// X25519 and P-256, which costs 16-34 % less CPU per handshake
	// between two Go peers. Default: true.
	PostQuantum *bool `yaml:"post_quantum"`
}

// Proxy configures the TLS relay from agents to central servers.
type Proxy struct {
	// Listen is where agents connect. Default: :443. The proxy is off while
	// no upstream is configured.
	Listen string `yaml:"listen"`
	// Upstreams are the central servers, tried per Balance.
	Upstreams []Upstream `yaml:"upstreams"`
	// Balance is least-busy or ordered. Default: least-busy.
	Balance string `yaml:"balance"`
	// ConnectionTimeout bounds dialing and TLS to one upstream. Default: 10s.
	ConnectionTimeout Duration `yaml:"connection_timeout"`
	// HandshakeTimeout bounds an agent's TLS handshake. Default: 10s.
	HandshakeTimeout Duration `yaml:"handshake_timeout"`
	// IdleTimeout closes a relay with no traffic either way. Default: 10m.
	IdleTimeout Duration `yaml:"idle_timeout"`
	// ValidateAgentCerts requires agents' client certificates to be in the
	// allow-list. Default: false.
	ValidateAgentCerts bool `yaml:"validate_agent_certs"`
	// MaxConnections caps concurrent agent connections. Default: 20000.
	MaxConnections int `yaml:"max_connections"`
	// MaxIngressRate shapes the total agent-to-upstream rate. Default: off.
	MaxIngressRate Rate `yaml:"max_ingress_rate"`
	// SourceRate caps new connections per second from one source address
	// (burst: twice that). Default: 20; a negative value turns it off.
	SourceRate float64 `yaml:"source_rate"`
	// HealthInterval is the period of the active upstream check (one TLS
	// handshake each). Default: 10s.
	HealthInterval Duration `yaml:"health_interval"`
	// ProxyProtocol is off or v2 (PROXY protocol header to upstreams).
	// Default: off.
	ProxyProtocol string `yaml:"proxy_protocol"`
}

// Upstream is one central server.
type Upstream struct {
	// Address is host:port, the host an IP address or a DNS name.
	Address string `yaml:"address"`
	// Pins are SPKI SHA-256 pins (sha256//<base64>); two allow rotation.
	// Default: none, verify against the system roots and the host name.
	Pins []string `yaml:"pins"`
	// ClientCert is a PKCS#12 (PFX) file with the certificate the gateway
	// presents to this upstream. Default: none.
	ClientCert string `yaml:"client_cert"`
	// ClientCertPasswordFile holds the PFX password. Default: empty password.
	ClientCertPasswordFile string `yaml:"client_cert_password_file"`
	// Probe is the STAMP reflector (host:port, usually the upstream's host
	// on 862) that measures this uplink against link.limits; out of
	// limits, the upstream is used only while no other is within them.
	// Default: none (not measured).
	Probe string `yaml:"probe"`
}

// Push configures the push server.
type Push struct {
	// Listen is the TLS (TCP) and QUIC (UDP) address. Default: :13295;
	// "off" disables the push server.
	Listen string `yaml:"listen"`
	// QUIC also serves the push protocol over QUIC on the same port.
	// Default: true.
	QUIC *bool `yaml:"quic"`
	// Auth is cert, token or none (none only on a loopback listen address).
	// Default: cert.
	Auth string `yaml:"auth"`
	// Keepalive is the interval agents are told to ping at. Default: 30s.
	Keepalive Duration `yaml:"keepalive"`
	// QueueTTL is how long an undelivered push waits before it expires.
	// Default: 24h.
	QueueTTL Duration `yaml:"queue_ttl"`
	// MaxConnections caps connected agents. Default: 100000.
	MaxConnections int `yaml:"max_connections"`
	// TokenKeyFile holds the keys of device tokens (push.auth token), one
	// base64 key per line: the first signs new tokens (dpgate token
	// issue), every one verifies. The same file on every node of a
	// cluster, so a token works wherever REDIRECT or failover sends the
	// agent; required with push.auth token and cluster.bind. A configured
	// file must exist: it is never generated. Default: data_dir/
	// push-token.key, one key made on first use.
	TokenKeyFile string `yaml:"token_key_file"`
	// SourceRate caps new connections per second from one source address
	// (an IPv6 /64; burst: twice that), so a flooding host cannot delay
	// everyone else's connect. Default: 200; a negative value turns it off.
	SourceRate float64 `yaml:"source_rate"`
	// MaxPayload caps one push's payload. Default: 4KiB.
	MaxPayload Size `yaml:"max_payload"`
}

// Wake configures wake-up forwarding and shutdown notifications.
type Wake struct {
	// Listen receives wake-up requests (UDP). Default: :15010; "off" disables.
	Listen string `yaml:"listen"`
	// AgentPort is the agents' wake-up UDP port. Default: 15000.
	AgentPort int `yaml:"agent_port"`
	// WOLPorts are the Wake-on-LAN UDP ports. Default: [7, 9].
	WOLPorts []int `yaml:"wol_ports"`
	// ShutdownListen receives agents' shutdown notices (UDP). Default:
	// :13000; "off" disables.
	ShutdownListen string `yaml:"shutdown_listen"`
	// SecretFile holds the HMAC key for wake-up requests. Default:
	// data_dir/wake.key, generated on first start.
	SecretFile string `yaml:"secret_file"`
	// Signature signs wake-ups to agents: ed25519 (the gateway's wake
	// key; agents get its public half) or hmac (each device's secret).
	// Default: ed25519.
	Signature string `yaml:"signature"`
}

// Link configures uplink measurement.
type Link struct {
	// Limits are the loss and delay an uplink must stay within.
	Limits Limits `yaml:"limits"`
	// ProbeInterval is the STAMP probe interval per uplink. Default: 100ms.
	ProbeInterval Duration `yaml:"probe_interval"`
	// Window is the sliding window the statistics cover. Default: 30s.
	Window Duration `yaml:"window"`
	// ReflectorListen runs a STAMP reflector (UDP). Default: off; the
	// standard port is 862.
	ReflectorListen string `yaml:"reflector_listen"`
}

// Limits are what the central side requires of an uplink.
type Limits struct {
	// Loss is the highest acceptable packet loss. Default: 10%.
	Loss Percent `yaml:"loss"`
	// Delay is the highest acceptable round-trip time. Default: 100ms.
	Delay Duration `yaml:"delay"`
}

// Cluster configures memberlist clustering.
type Cluster struct {
	// Bind is the gossip address (TCP and UDP). Default: off (single node);
	// the standard port is 7946.
	Bind string `yaml:"bind"`
	// Advertise is the address peers use to reach this node. Default: the
	// bind address, or when that is a wildcard, the host's first private
	// address (memberlist's choice).
	Advertise string `yaml:"advertise"`
	// Join lists seed nodes (host:port).
	Join []string `yaml:"join"`
	// SecretKeyFile holds the gossip encryption key (16, 24 or 32 bytes,
	// base64), the same on every node. Required with Bind, loopback
	// included: gossip carries the agent allow-list.
	SecretKeyFile string `yaml:"secret_key_file"`
	// MinCopies is how many nodes must have committed a push before the
	// API answers 2xx. A node that can reach none of the device's two
	// owners (the minority side of a partition) keeps the push on its own
	// disk (copies 1) and hands it over after the heal; with 2 it answers
	// 503 instead (the push is still kept and delivered, so a publisher
	// that retries elsewhere may cause a duplicate). Default: 1; at most 2.
	MinCopies int `yaml:"min_copies"`
	// Margin above the cluster's fair share of agents before a node sends
	// new agents elsewhere. Default: 5%.
	Margin Percent `yaml:"margin"`
	// RebalanceRate is how many agents per second a node still above
	// its fair share by the margin, after RebalanceAfter, asks to move to
	// a less loaded node (REDIRECT during the session), so a node that
	// joins or comes back fills up without mass disconnects. Default: 50;
	// a negative value turns it off.
	RebalanceRate int `yaml:"rebalance_rate"`
	// RebalanceAfter is how long a node must stay above its fair share
	// before it moves agents: longer rides out short bursts of
	// reconnects, shorter evens the load out sooner after a node comes
	// back. Default: 5s.
	RebalanceAfter Duration `yaml:"rebalance_after"`
	// ProbeInterval is how often memberlist probes a peer (the probe
	// timeout is half of it). A dead node is declared dead by all others
	// after about 4 to 5.5 of these; shorter detects sooner but declares
	// CPU-starved nodes dead more often. Default: 400ms.
	ProbeInterval Duration `yaml:"probe_interval"`
	// DNS answers for the push service.
	DNS DNS `yaml:"dns"`
}

// DNS configures the cluster's DNS answers.
type DNS struct {
	// Listen is the DNS address (UDP and TCP). Default: off; the standard
	// port is 8600.
	Listen string `yaml:"listen"`
	// Domain is the zone answered. Default: dpgate.internal.
	Domain string `yaml:"domain"`
}

// Default ports and values, named where other packages need them.
const (
	DefaultAdminListen    = "127.0.0.1:13290"
	DefaultProxyListen    = ":443"
	DefaultPushListen     = ":13295"
	DefaultWakeListen     = ":15010"
	DefaultAgentWakePort  = 15000
	DefaultShutdownListen = ":13000"
	DefaultDNSDomain      = "dpgate.internal."
	DefaultQueueTTL       = 24 * time.Hour
)

// Names of log.level and log.format values.
const (
	LogDebug = "debug"
	LogInfo  = "info"
	LogWarn  = "warn"
	LogError = "error"
	LogText  = "text"
	LogJSON  = "json"
)

// ProxyProtocolV2 is the proxy.proxy_protocol value that sends PROXY
// protocol v2 headers (the other is Off).
const ProxyProtocolV2 = "v2"

// Default returns the configuration used when no file is given.
func Default() *Config {
	c := &Config{}
	c.withDefaults()
	return c
}

// hostname and dataDirDefault are variables so tests can fix them.
var (
	hostname       = os.Hostname
	dataDirDefault = func() string {
		if d := os.Getenv("STATE_DIRECTORY"); d != "" {
			return filepath.SplitList(d)[0]
		}
		if os.Geteuid() == 0 {
			return "/var/lib/dpgate"
		}
		if home, err := os.UserHomeDir(); err == nil {
			return filepath.Join(home, ".local", "state", "dpgate")
		}
		return "dpgate-data"
	}
)

func (c *Config) withDefaults() {
	if c.Node.Name == "" {
		if h, err := hostname(); err == nil && h != "" {
			c.Node.Name = h
		} else {
			c.Node.Name = "dpgate"
		}
	}
	c.Node.DataDir = cmp.Or(c.Node.DataDir, dataDirDefault())
	c.Log.Level = cmp.Or(c.Log.Level, LogInfo)
	c.Log.Format = cmp.Or(c.Log.Format, LogText)
	c.Admin.Listen = cmp.Or(c.Admin.Listen, DefaultAdminListen)
	c.TLS.PostQuantum = cmp.Or(c.TLS.PostQuantum, ptr(true))

	p := &c.Proxy
	p.Listen = cmp.Or(p.Listen, DefaultProxyListen)
	p.Balance = cmp.Or(p.Balance, proxy.DefaultBalance)
	p.ConnectionTimeout = cmp.Or(p.ConnectionTimeout, Duration(proxy.DefaultConnectionTimeout))
	p.HandshakeTimeout = cmp.Or(p.HandshakeTimeout, Duration(proxy.DefaultHandshakeTimeout))
	p.IdleTimeout = cmp.Or(p.IdleTimeout, Duration(proxy.DefaultIdleTimeout))
	p.MaxConnections = cmp.Or(p.MaxConnections, proxy.DefaultMaxConnections)
	p.SourceRate = cmp.Or(p.SourceRate, proxy.DefaultSourceRate)
	p.HealthInterval = cmp.Or(p.HealthInterval, Duration(proxy.DefaultHealthInterval))
	p.ProxyProtocol = cmp.Or(p.ProxyProtocol, Off)

	u := &c.Push
	u.Listen = cmp.Or(u.Listen, DefaultPushListen)
	u.QUIC = cmp.Or(u.QUIC, ptr(true))
	u.Auth = cmp.Or(u.Auth, push.DefaultAuth)
	u.Keepalive = cmp.Or(u.Keepalive, Duration(push.DefaultKeepalive))
	u.QueueTTL = cmp.Or(u.QueueTTL, Duration(DefaultQueueTTL))
	u.MaxConnections = cmp.Or(u.MaxConnections, push.DefaultMaxConnections)
	u.SourceRate = cmp.Or(u.SourceRate, push.DefaultSourceRate)
	u.MaxPayload = cmp.Or(u.MaxPayload, push.DefaultMaxPayload)

	w := &c.Wake
	w.Listen = cmp.Or(w.Listen, DefaultWakeListen)
	w.AgentPort = cmp.Or(w.AgentPort, wake.DefaultAgentPort)
	if len(w.WOLPorts) == 0 {
		w.WOLPorts = wake.DefaultWOLPorts()
	}
	w.ShutdownListen = cmp.Or(w.ShutdownListen, DefaultShutdownListen)
	w.Signature = cmp.Or(w.Signature, wake.SignatureEd25519)

	l := &c.Link
	l.Limits.Loss = cmp.Or(l.Limits.Loss, Percent(link.DefaultLimits.Loss))
	l.Limits.Delay = cmp.Or(l.Limits.Delay, Duration(link.DefaultLimits.Delay))
	l.ProbeInterval = cmp.Or(l.ProbeInterval, Duration(link.DefaultInterval))
	l.Window = cmp.Or(l.Window, Duration(link.DefaultWindow))

	cl := &c.Cluster
	cl.DNS.Domain = cmp.Or(cl.DNS.Domain, DefaultDNSDomain)
	cl.RebalanceRate = cmp.Or(cl.RebalanceRate, cluster.DefaultRebalanceRate)
	cl.RebalanceAfter = cmp.Or(cl.RebalanceAfter, Duration(cluster.DefaultRebalanceAfter))
	cl.MinCopies = cmp.Or(cl.MinCopies, 1)
	cl.ProbeInterval = cmp.Or(cl.ProbeInterval, Duration(cluster.DefaultProbeInterval))
	cl.Margin = cmp.Or(cl.Margin, Percent(cluster.DefaultMargin))
}

func ptr[T any](v T) *T { return &v }

// Enabled reports whether a listener that is on by default is enabled.
func Enabled(listen string) bool { return listen != "" && listen != Off }

// ProxyEnabled reports whether the proxy runs: only with an upstream.
func (c *Config) ProxyEnabled() bool { return len(c.Proxy.Upstreams) > 0 }

// expandCredentials replaces $CREDENTIALS_DIRECTORY (or
// ${CREDENTIALS_DIRECTORY}) in a file name with the directory systemd
// puts a service's LoadCredential= files in. Unset, the name is left as
// it is, and the file is not found under it.
func expandCredentials(name string) string {
	dir := os.Getenv("CREDENTIALS_DIRECTORY")
	if dir == "" {
		return name
	}
	return strings.NewReplacer("${CREDENTIALS_DIRECTORY}", dir, "$CREDENTIALS_DIRECTORY", dir).Replace(name)
}

// resolvePaths makes relative file names in the file relative to the
// directory the file is in, so a config works from any working directory.
func (c *Config) resolvePaths(dir string) {
	abs := func(p *string) {
		*p = expandCredentials(*p)
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	abs(&c.Node.DataDir)
	abs(&c.Admin.TokenFile)
	abs(&c.Admin.Socket)
	abs(&c.TLS.Cert)
	abs(&c.TLS.Key)
	for i := range c.Proxy.Upstreams {
		abs(&c.Proxy.Upstreams[i].ClientCert)
		abs(&c.Proxy.Upstreams[i].ClientCertPasswordFile)
	}
	abs(&c.Wake.SecretFile)
	abs(&c.Push.TokenKeyFile)
	abs(&c.Cluster.SecretKeyFile)
}

// InDataDir returns the path of a file dpgate keeps in the data directory.
func (c *Config) InDataDir(name string) string { return filepath.Join(c.Node.DataDir, name) }

// File is the file the configuration was read from ("" for defaults).
func (c *Config) File() string { return c.file }
