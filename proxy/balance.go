package proxy

import (
	"cmp"
	"slices"
	"time"
)

// candidates returns the upstreams in the order one agent connection
// tries them. Healthy ones whose link is within its limits come first: by
// fewest active relays then lower RTT for least-busy, in configured order
// for ordered; then healthy ones whose link is out of limits (used only
// while no other is within them). Ejected upstreams follow, soonest back
// first, as a last resort rather than refusing the agent outright.
func candidates(ups []*upstream, balance string, now time.Time) []*upstream {
	type entry struct {
		u     *upstream
		until time.Time // zero when healthy
		out   bool      // link out of limits
	}
	es := make([]entry, len(ups))
	for i, u := range ups {
		u.mu.Lock()
		es[i] = entry{u, u.ejectedUntil, u.outOfLimits.Load()}
		u.mu.Unlock()
		if !now.Before(es[i].until) {
			es[i].until = time.Time{}
		}
	}
	slices.SortStableFunc(es, func(a, b entry) int {
		if c := a.until.Compare(b.until); c != 0 {
			return c // healthy (zero) first, then soonest back
		}
		if a.out != b.out {
			if a.out {
				return 1
			}
			return -1
		}
		if balance != LeastBusy {
			return 0 // stable: configured order
		}
		if c := cmp.Compare(a.u.active.Load(), b.u.active.Load()); c != 0 {
			return c
		}
		return cmp.Compare(a.u.rtt.Load(), b.u.rtt.Load())
	})
	out := make([]*upstream, len(es))
	for i, e := range es {
		out[i] = e.u
	}
	return out
}
