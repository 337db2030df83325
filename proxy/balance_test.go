package proxy

import (
	"testing"
	"time"
)

// TestCandidatesAvoidOutOfLimitsLinks: an upstream whose link is out of
// limits goes after those within them, but before ejected ones, and is
// still used when it is the only healthy one.
func TestCandidatesAvoidOutOfLimitsLinks(t *testing.T) {
	a := newUpstream(UpstreamConfig{Address: "a:443"})
	b := newUpstream(UpstreamConfig{Address: "b:443"})
	c := newUpstream(UpstreamConfig{Address: "c:443"})
	now := time.Now()
	order := func(ups ...*upstream) string {
		s := ""
		for _, u := range candidates(ups, LeastBusy, now) {
			s += u.addr[:1]
		}
		return s
	}
	a.outOfLimits.Store(true)
	if got := order(a, b, c); got != "bca" {
		t.Errorf("order %q, want bca (a out of limits last)", got)
	}
	c.ejectedUntil = now.Add(time.Minute)
	if got := order(a, b, c); got != "bac" {
		t.Errorf("order %q, want bac (out of limits before ejected)", got)
	}
	b.outOfLimits.Store(true)
	a.active.Store(5)
	if got := order(a, b, c); got != "bac" {
		t.Errorf("order %q, want bac (both out of limits: least busy first)", got)
	}
}
