package push

import (
	"cmp"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

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

// Defaults of Config's zero fields, written here once; internal/config
// fills the configuration file's keys from them.
const (
	DefaultAuth             = AuthCert
	DefaultKeepalive        = 30 * time.Second
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultWriteTimeout     = 10 * time.Second
	DefaultMaxConnections   = 100000
	DefaultMaxPayload       = 4096
	DefaultAcceptRate       = 2000
	DefaultSourceRate       = 200
	DefaultQUICRetryAbove   = 64
	DefaultDrainSpread      = 5 * time.Second
	DefaultExpireInterval   = 10 * time.Second
	DefaultPathInterval     = 10 * time.Second
)

// Cluster is what the server asks of the cluster it is part of;
// cluster.Router implements it, and SetCluster hands it over. Without one
// the server is a cluster of one: no REDIRECT, and WELCOME names the
// address the agent connected to.
type Cluster interface {
	// Nodes lists the push addresses for WELCOME, in failover order; none:
	// the address the agent connected to.
	Nodes() []string
	// Redirect is asked for every new session with the count of sessions
	// held here and whether the agent already comes from a REDIRECT; if
	// it names another node the agent gets REDIRECT there instead of
	// WELCOME (the least-busy rule).
	Redirect(sessions int, redirected bool) (addr string, ok bool)
	// SessionChanged is told when a device's session starts here and when
	// it ends (not when it is replaced on this node).
	SessionChanged(device string, up bool, since time.Time)
	// Acked is told when a device acknowledges a queued push here.
	Acked(device string, id [16]byte)
}

// alone is the Cluster of a server on its own.
type alone struct{}

func (alone) Nodes() []string                        { return nil }
func (alone) Redirect(int, bool) (string, bool)      { return "", false }
func (alone) SessionChanged(string, bool, time.Time) {}
func (alone) Acked(string, [16]byte)                 {}

// Protocol is another protocol on the push port. A TLS client offering
// its ALPN name passes the same per-source limit and accept budget as an
// agent (so the port's flood protection holds for every protocol), is
// handshaken with TLS instead of the agents' configuration, and is handed
// to Serve, outside the agents' connection limit; Serve owns the
// connection.
type Protocol struct {
	TLS   *tls.Config
	Serve func(*tls.Conn)
}

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
	// QUICResetKey (32 bytes) lets the server answer packets of QUIC
	// connections it does not know with a stateless reset (RFC 9000
	// section 10.3), which ends them at the agent at once. Kept across
	// restarts, it makes an agent whose gateway crashed and came back
	// reconnect at its next packet instead of after its idle timeout.
	// Default: none (no resets).
	QUICResetKey []byte
	// DrainSpread: on Shutdown, agents are told to reconnect elsewhere
	// after a random delay up to this. Default: 5s; negative: at once.
	DrainSpread time.Duration
	// ExpireInterval is how often expired pushes are swept. Default: 10s.
	ExpireInterval time.Duration
	// PathInterval is how often every session's path figures (TCP_INFO,
	// QUIC ConnectionStats) are sampled into the metrics. Default: 10s;
	// negative: never (GET /v1/devices/{id} still reads them on demand).
	PathInterval time.Duration
	// KeyExchange are the key exchange groups (tlsconf.KeyExchange).
	// Default: Go's, with the post-quantum hybrid.
	KeyExchange []tls.CurveID

	// Protocols are other protocols sharing the push port over TLS, by
	// ALPN name: the gateway's port mux (in a cluster, the router's peer
	// protocol, wire.PeerALPN). Default: none; a client offering only
	// other names is refused.
	Protocols map[string]Protocol

	// Registerer takes the server's metrics (docs/METRICS.md). Default:
	// a registry of its own, read by nobody.
	Registerer prometheus.Registerer
	Logger     *slog.Logger // default slog.Default()
}

func (c *Config) withDefaults() {
	c.Auth = cmp.Or(c.Auth, DefaultAuth)
	c.Keepalive = cmp.Or(c.Keepalive, DefaultKeepalive)
	c.HandshakeTimeout = cmp.Or(c.HandshakeTimeout, DefaultHandshakeTimeout)
	c.WriteTimeout = cmp.Or(c.WriteTimeout, DefaultWriteTimeout)
	c.MaxConnections = cmp.Or(c.MaxConnections, DefaultMaxConnections)
	c.MaxPayload = cmp.Or(c.MaxPayload, DefaultMaxPayload)
	c.AcceptRate = cmp.Or(c.AcceptRate, DefaultAcceptRate)
	c.SourceRate = cmp.Or(c.SourceRate, DefaultSourceRate)
	c.QUICRetryAbove = cmp.Or(c.QUICRetryAbove, DefaultQUICRetryAbove)
	c.DrainSpread = cmp.Or(c.DrainSpread, DefaultDrainSpread)
	c.ExpireInterval = cmp.Or(c.ExpireInterval, DefaultExpireInterval)
	c.PathInterval = cmp.Or(c.PathInterval, DefaultPathInterval)
	c.Registerer = cmp.Or[prometheus.Registerer](c.Registerer, prometheus.NewRegistry())
	c.Logger = cmp.Or(c.Logger, slog.Default())
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
	case len(c.QUICResetKey) != 0 && len(c.QUICResetKey) != 32:
		return fmt.Errorf("push: QUICResetKey is %d bytes, want 32", len(c.QUICResetKey))
	}
	return nil
}
