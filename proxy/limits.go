package proxy

import (
	"golang.org/x/time/rate"
)

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
