package proxy

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dpgate/dpgate/tlsconf"
)

// upstream is one central server with its health and load.
type upstream struct {
	addr     string
	key      string // upstreamKey of its configuration; "" when it cannot be compared
	tls      *tls.Config
	cert     atomic.Pointer[tls.Certificate] // client certificate; nil: none
	sessions sessionCache

	active atomic.Int64 // relays in progress, and dials reserved for one
	relays atomic.Uint64
	fails  atomic.Uint64
	// ejections counts the times it was ejected.
	ejections atomic.Uint64
	// dialSeconds observes the time of each successful dial.
	dialSeconds prometheus.Observer
	rtt         atomic.Int64 // smoothed TCP connect time, ns; 0 = not measured
	// outOfLimits: the link measurement says this uplink is beyond the
	// loss or delay limits; it is tried after those within them.
	outOfLimits atomic.Bool
	// Passive measurement: TCP_INFO of relayed connections (tcpinfo.go).
	tcpRTT, tcpRTTVar      atomic.Int64 // ns; RTT smoothed over connections
	tcpSamples, tcpRetrans atomic.Uint64

	mu           sync.Mutex
	consecutive  int
	backoff      time.Duration
	ejectedUntil time.Time
	lastErr      string
}

func newUpstream(c UpstreamConfig) *upstream {
	host, _, _ := net.SplitHostPort(c.Address)
	var cfg *tls.Config
	if len(c.Pins) > 0 {
		cfg = tlsconf.PinnedClientConfig(c.Pins, host)
	} else {
		cfg = &tls.Config{MinVersion: tls.VersionTLS12, ServerName: host, RootCAs: c.RootCAs}
	}
	u := &upstream{addr: c.Address, tls: cfg, key: upstreamKey(c)}
	u.cert.Store(c.ClientCert)
	// Read at every handshake, so a reloaded certificate applies to the
	// next connection. An empty certificate means "none".
	cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		if c := u.cert.Load(); c != nil {
			return c, nil
		}
		return &tls.Certificate{}, nil
	}
	// Resumed sessions skip the upstream's signature and key exchange
	// costs on the many short connections agents make.
	u.sessions.reset()
	cfg.ClientSessionCache = &u.sessions
	return u
}

// upstreamKey identifies an upstream's configuration across a reload:
// address and pins ("" with a custom root pool, which is not compared).
func upstreamKey(c UpstreamConfig) string {
	if c.RootCAs != nil {
		return ""
	}
	pins := make([]string, len(c.Pins))
	for i, p := range c.Pins {
		pins[i] = hex.EncodeToString(p)
	}
	slices.Sort(pins)
	return c.Address + "|" + strings.Join(pins, ",")
}

// sessionCache is an LRU TLS session cache that can be emptied while in
// use: a resumed session carries the client identity it began with, so a
// new client certificate needs fresh sessions.
type sessionCache struct {
	c atomic.Pointer[tls.ClientSessionCache]
}

func (s *sessionCache) reset() {
	c := tls.NewLRUClientSessionCache(64)
	s.c.Store(&c)
}

func (s *sessionCache) Get(key string) (*tls.ClientSessionState, bool) { return (*s.c.Load()).Get(key) }
func (s *sessionCache) Put(key string, cs *tls.ClientSessionState)     { (*s.c.Load()).Put(key, cs) }

// dial connects and completes TLS within ctx. With src set, a PROXY v2
// header carrying the agent's addresses precedes the TLS handshake.
func (u *upstream) dial(ctx context.Context, d *net.Dialer, src, dst net.Addr) (*tls.Conn, error) {
	start := time.Now()
	raw, err := d.DialContext(ctx, "tcp", u.addr)
	if err != nil {
		return nil, err
	}
	smooth(&u.rtt, time.Since(start))
	if src != nil {
		if deadline, ok := ctx.Deadline(); ok {
			raw.SetWriteDeadline(deadline)
		}
		if _, err := proxyproto.HeaderProxyFromAddrs(2, src, dst).WriteTo(raw); err != nil {
			raw.Close()
			return nil, fmt.Errorf("PROXY header: %w", err)
		}
		raw.SetWriteDeadline(time.Time{})
	}
	c := tls.Client(newSock(raw), u.tls)
	if err := c.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, err
	}
	return c, nil
}

// smooth folds d into an average kept like TCP's SRTT (gain 1/8; the
// first sample is taken as it is), without a lock.
func smooth(avg *atomic.Int64, d time.Duration) {
	for {
		old := avg.Load()
		next := int64(d)
		if old != 0 {
			next = old + (int64(d)-old)/8
		}
		if avg.CompareAndSwap(old, next) {
			return
		}
	}
}

// succeeded records a good dial or health check: the upstream is back.
func (u *upstream) succeeded() (recovered bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	recovered = !u.ejectedUntil.IsZero()
	u.consecutive, u.backoff, u.ejectedUntil, u.lastErr = 0, 0, time.Time{}, ""
	return recovered
}

// failed records a failure; after ejectAfter in a row the upstream is
// ejected for a backoff that doubles up to a minute. It returns the
// ejection end when this failure ejected it.
func (u *upstream) failed(err error, now time.Time, ejectAfter int, first time.Duration) (ejected time.Time) {
	u.fails.Add(1)
	u.mu.Lock()
	defer u.mu.Unlock()
	u.consecutive++
	u.lastErr = err.Error()
	if u.consecutive < ejectAfter {
		return time.Time{}
	}
	if u.backoff == 0 {
		u.backoff = first
	} else if u.backoff < time.Minute {
		u.backoff = min(2*u.backoff, time.Minute)
	}
	u.ejectedUntil = now.Add(u.backoff)
	u.ejections.Add(1)
	return u.ejectedUntil
}

func (u *upstream) ejected(now time.Time) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return now.Before(u.ejectedUntil)
}

// UpstreamStatus is one upstream's state in /v1/status.
type UpstreamStatus struct {
	Address             string     `json:"address"`
	State               string     `json:"state"` // healthy or ejected
	ActiveRelays        int64      `json:"active_relays"`
	RTTMillis           float64    `json:"rtt_ms"` // smoothed TCP connect time
	Relays              uint64     `json:"relays"`
	Failures            uint64     `json:"failures"`
	ConsecutiveFailures int        `json:"consecutive_failures"`
	EjectedUntil        *time.Time `json:"ejected_until,omitempty"`
	LastError           string     `json:"last_error,omitempty"`
	OutOfLimits         bool       `json:"link_out_of_limits,omitempty"`
	// From the kernel (TCP_INFO) of relayed connections, sampled as each
	// ends: smoothed RTT and its variation, retransmitted segments.
	TCPRTTMillis    float64 `json:"tcp_rtt_ms,omitempty"`
	TCPRTTVarMillis float64 `json:"tcp_rttvar_ms,omitempty"`
	TCPRetransmits  uint64  `json:"tcp_retransmits"`
	TCPSamples      uint64  `json:"tcp_samples"`
}

func (u *upstream) status(now time.Time) UpstreamStatus {
	u.mu.Lock()
	defer u.mu.Unlock()
	s := UpstreamStatus{
		Address:             u.addr,
		State:               "healthy",
		ActiveRelays:        u.active.Load(),
		RTTMillis:           float64(u.rtt.Load()) / 1e6,
		Relays:              u.relays.Load(),
		Failures:            u.fails.Load(),
		ConsecutiveFailures: u.consecutive,
		LastError:           u.lastErr,
		OutOfLimits:         u.outOfLimits.Load(),
		TCPRTTMillis:        float64(u.tcpRTT.Load()) / 1e6,
		TCPRTTVarMillis:     float64(u.tcpRTTVar.Load()) / 1e6,
		TCPRetransmits:      u.tcpRetrans.Load(),
		TCPSamples:          u.tcpSamples.Load(),
	}
	if now.Before(u.ejectedUntil) {
		s.State = "ejected"
		t := u.ejectedUntil.UTC()
		s.EjectedUntil = &t
	}
	return s
}
