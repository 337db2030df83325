package proxy

import (
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// sourceLimiter caps new connections per second from one source address,
// so one misbehaving host (or a reconnect loop) cannot starve the
// handshake CPU that every other agent needs.
type sourceLimiter struct {
	rate  rate.Limit
	burst int

	mu      sync.Mutex
	sources map[netip.Addr]*sourceEntry
	swept   time.Time
}

type sourceEntry struct {
	lim  *rate.Limiter
	seen time.Time
}

func newSourceLimiter(perSecond float64) *sourceLimiter {
	if perSecond < 0 {
		return nil
	}
	return &sourceLimiter{
		rate:    rate.Limit(perSecond),
		burst:   max(1, int(2*perSecond)),
		sources: map[netip.Addr]*sourceEntry{},
	}
}

// allow reports whether a new connection from addr may proceed.
func (l *sourceLimiter) allow(addr net.Addr, now time.Time) bool {
	if l == nil {
		return true
	}
	ap, err := netip.ParseAddrPort(addr.String())
	if err != nil {
		return true
	}
	ip := ap.Addr().Unmap()
	l.mu.Lock()
	defer l.mu.Unlock()
	// Forget sources quiet for a minute: their bucket is full again anyway.
	if now.Sub(l.swept) > time.Minute {
		for k, e := range l.sources {
			if now.Sub(e.seen) > time.Minute {
				delete(l.sources, k)
			}
		}
		l.swept = now
	}
	e := l.sources[ip]
	if e == nil {
		e = &sourceEntry{lim: rate.NewLimiter(l.rate, l.burst)}
		l.sources[ip] = e
	}
	e.seen = now
	return e.lim.AllowN(now, 1)
}

// ingressShaper returns a byte-rate limiter for bitsPerSecond, or nil.
// The burst is 100 ms worth of traffic, at least one large buffer, so a
// single read never exceeds it.
func ingressShaper(bitsPerSecond uint64) *rate.Limiter {
	if bitsPerSecond == 0 {
		return nil
	}
	bytesPerSecond := float64(bitsPerSecond) / 8
	return rate.NewLimiter(rate.Limit(bytesPerSecond), max(largeBuf, int(bytesPerSecond/10)))
}
