package proxy

import (
	"cmp"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dpgate/dpgate/tlsconf"
)

// Balance names.
const (
	LeastBusy = "least-busy"
	Ordered   = "ordered"
)

// Defaults of Config's zero fields, written here once; internal/config
// fills the configuration file's keys from them.
const (
	DefaultBalance           = LeastBusy
	DefaultConnectionTimeout = 10 * time.Second // seeds/003: ConnectionTimeout 10 s
	DefaultHandshakeTimeout  = 10 * time.Second
	DefaultIdleTimeout       = 10 * time.Minute
	DefaultMaxConnections    = 20000
	DefaultSourceRate        = 20
	DefaultHealthInterval    = 10 * time.Second
	DefaultEjectAfter        = 3
	DefaultEjectBackoff      = 2 * time.Second
)

// Config configures a Proxy. Zero values mean the defaults in the comments.
type Config struct {
	// Identity is the gateway certificate agents pin. Required.
	Identity *tlsconf.Identity
	// AllowList, when set, makes agents present a client certificate that
	// is in it (proxy.validate_agent_certs). Default: no client certificate.
	AllowList *tlsconf.AllowList
	// Upstreams are the central servers. At least one is required.
	Upstreams []UpstreamConfig
	// Balance is LeastBusy (default) or Ordered.
	Balance string
	// ConnectionTimeout bounds dial plus TLS handshake to one upstream.
	// Default: 10s.
	ConnectionTimeout time.Duration
	// HandshakeTimeout bounds an agent's TLS handshake. Default: 10s.
	HandshakeTimeout time.Duration
	// IdleTimeout closes a relay with no traffic either way. Default: 10m.
	IdleTimeout time.Duration
	// MaxConnections caps concurrent agent connections. Default: 20000.
	MaxConnections int
	// SourceRate caps new connections per second from one source IP
	// address (with a burst of twice that). Default: 20; negative: off.
	SourceRate float64
	// MaxIngressRate shapes the total agent-to-upstream rate, in bits per
	// second. Default: 0, unlimited.
	MaxIngressRate uint64
	// ProxyProtocol sends a PROXY protocol v2 header to upstreams.
	ProxyProtocol bool
	// KeyExchange are the key exchange groups on both sides
	// (tlsconf.KeyExchange of tls.post_quantum). Default: Go's, with the
	// post-quantum hybrid.
	KeyExchange []tls.CurveID
	// HealthInterval is the period of the active health check (one TLS
	// handshake per upstream). Default: 10s.
	HealthInterval time.Duration
	// EjectAfter consecutive failures eject an upstream. Default: 3.
	EjectAfter int
	// EjectBackoff is the first ejection time; it doubles on each further
	// failure up to 1 minute. Default: 2s.
	EjectBackoff time.Duration

	// Registerer takes the proxy's metrics (docs/METRICS.md). Default: a
	// registry of its own, read by nobody.
	Registerer prometheus.Registerer
	Logger     *slog.Logger // default slog.Default()
}

// UpstreamConfig is one central server.
type UpstreamConfig struct {
	// Address is host:port.
	Address string
	// Pins, when set, replace chain verification with an SPKI pin check.
	Pins tlsconf.PinSet
	// RootCAs verify the upstream when there are no pins. Default: the
	// system roots.
	RootCAs *x509.CertPool
	// ClientCert is presented to the upstream when set.
	ClientCert *tls.Certificate
}

func (c *Config) withDefaults() {
	c.Balance = cmp.Or(c.Balance, DefaultBalance)
	c.ConnectionTimeout = cmp.Or(c.ConnectionTimeout, DefaultConnectionTimeout)
	c.HandshakeTimeout = cmp.Or(c.HandshakeTimeout, DefaultHandshakeTimeout)
	c.IdleTimeout = cmp.Or(c.IdleTimeout, DefaultIdleTimeout)
	c.MaxConnections = cmp.Or(c.MaxConnections, DefaultMaxConnections)
	c.SourceRate = cmp.Or(c.SourceRate, DefaultSourceRate)
	c.HealthInterval = cmp.Or(c.HealthInterval, DefaultHealthInterval)
	c.EjectAfter = cmp.Or(c.EjectAfter, DefaultEjectAfter)
	c.EjectBackoff = cmp.Or(c.EjectBackoff, DefaultEjectBackoff)
	c.Registerer = cmp.Or[prometheus.Registerer](c.Registerer, prometheus.NewRegistry())
	c.Logger = cmp.Or(c.Logger, slog.Default())
}

// Validate reports the first bad field.
func (c *Config) Validate() error {
	if c.Identity == nil {
		return errors.New("proxy: Identity is required")
	}
	if len(c.Upstreams) == 0 {
		return errors.New("proxy: at least one upstream is required")
	}
	for i, u := range c.Upstreams {
		if _, _, err := net.SplitHostPort(u.Address); err != nil {
			return fmt.Errorf("proxy: upstreams[%d].address %q: %w", i, u.Address, err)
		}
	}
	if c.Balance != LeastBusy && c.Balance != Ordered {
		return fmt.Errorf("proxy: balance %q is not %s or %s", c.Balance, LeastBusy, Ordered)
	}
	if c.MaxConnections < 0 || c.ConnectionTimeout < 0 || c.HandshakeTimeout < 0 || c.IdleTimeout < 0 {
		return errors.New("proxy: limits and timeouts must not be negative")
	}
	return nil
}
