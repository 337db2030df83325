// Package ratelimit caps new connections per second from one source, the
// guard the proxy and the push port share: one misbehaving host (or a
// reconnect loop) must not take the handshake CPU and the accept budget
// every other agent needs.
package ratelimit

import (
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"golang.org/x/time/rate"
)

// PerSource is a token bucket per source: an IPv4 address, or the /64 an
// IPv6 address is in (one host holds a whole /64). A nil *PerSource allows
// everything. It keeps the sources seen in the last minute, MaxSources at
// most.
type PerSource struct {
	rate  rate.Limit
	burst int

	mu      sync.Mutex
	sources *simplelru.LRU[netip.Prefix, *entry] // least recently seen first out
}

// MaxSources bounds the sources a PerSource keeps, some 270 bytes each (9 MB in all): a
// local user can connect from every address of 127.0.0.0/8, and an IPv6
// host may hold many /64s. Past it the source seen least recently is
// forgotten; it gets a full burst if it comes back, within the accept
// budget every source shares.
const MaxSources = 32768

type entry struct {
	lim  *rate.Limiter
	seen time.Time
}

// New allows perSecond new connections from each source, with a burst of
// twice that (at least 1); a negative rate is no limit (nil).
func New(perSecond float64) *PerSource {
	if perSecond < 0 {
		return nil
	}
	sources, _ := simplelru.NewLRU[netip.Prefix, *entry](MaxSources, nil) // errs only on a size <= 0
	return &PerSource{
		rate:    rate.Limit(perSecond),
		burst:   max(1, int(2*perSecond)),
		sources: sources,
	}
}

// Allow reports whether a new connection from addr may proceed.
func (l *PerSource) Allow(addr net.Addr, now time.Time) bool {
	if l == nil {
		return true
	}
	ap, err := netip.ParseAddrPort(addr.String())
	if err != nil {
		return true // not an IP source (a test pipe, a Unix socket)
	}
	key := Source(ap.Addr())
	l.mu.Lock()
	defer l.mu.Unlock()
	// Forget sources quiet for a minute: their bucket is full again anyway.
	for {
		_, oldest, ok := l.sources.GetOldest()
		if !ok || now.Sub(oldest.seen) <= time.Minute {
			break
		}
		l.sources.RemoveOldest()
	}
	e, ok := l.sources.Get(key)
	if !ok {
		e = &entry{lim: rate.NewLimiter(l.rate, l.burst)}
		l.sources.Add(key, e)
	}
	e.seen = now
	return e.lim.AllowN(now, 1)
}

// Len is the number of sources tracked.
func (l *PerSource) Len() int {
	if l == nil {
		return 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.sources.Len()
}

// Source is the key a connection from ip counts under: the IPv4 address
// itself, or the IPv6 /64.
func Source(ip netip.Addr) netip.Prefix {
	ip = ip.Unmap()
	bits := 32
	if ip.Is6() {
		bits = 64
	}
	p, _ := ip.Prefix(bits)
	return p
}
