package cluster

import (
	"cmp"
	mrand "math/rand/v2"
	"slices"
	"time"
)

// load is a member's estimated connections: what it last gossiped, plus
// the agents this node redirected to it that the figure cannot include
// yet: those sent after the figure arrived here, and those sent shortly
// before it (they may still have been connecting when it was taken).
// Counting a few twice only sends a little less there. Caller holds c.mu.
func (c *Cluster) load(m Member) int {
	times := c.redirects[m.Name]
	if len(times) == 0 {
		return m.Meta.Conns
	}
	cutoff := c.metaAt[m.Name].Add(-c.lag())
	// Forget what no figure can still be missing.
	keep := times[:0]
	n := 0
	for _, t := range times {
		if time.Since(t) < 10*time.Second {
			keep = append(keep, t)
			if t.After(cutoff) {
				n++
			}
		}
	}
	c.redirects[m.Name] = keep
	return m.Meta.Conns + n
}

// lag is how old a gossiped figure may be when it arrives, plus the time
// a redirected agent takes to connect.
func (c *Cluster) lag() time.Duration { return 2*c.cfg.RefreshInterval + 500*time.Millisecond }

// pushable are the members that take agents now, least loaded first.
func (c *Cluster) pushable() []Member {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []Member
	for _, m := range c.members {
		if m.Meta.Push != "" && !m.Meta.Draining {
			out = append(out, m)
		}
	}
	slices.SortFunc(out, func(a, b Member) int {
		if d := cmp.Compare(c.load(a), c.load(b)); d != 0 {
			return d
		}
		return cmp.Compare(a.Name, b.Name)
	})
	return out
}

// RedirectTarget decides where a new agent should go. ownConns is this
// node's live count. When this node is above the fair share by more than
// the margin (and more than one agent, so small clusters do not flap), it
// returns the push address of a node below the fair share, drawn at
// random weighted by how far below it is; else ok is false and the agent
// stays. Drawing rather than always naming the least loaded node matters
// when several nodes redirect at once: with views that lag by a gossip
// round they would all pick the same node and overshoot it. An agent
// that already comes from a REDIRECT is sent on only when this node is
// above the fair share by three times the margin: small disagreements
// between nodes' lagging views must not bounce agents around, large ones
// should still be corrected.
func (c *Cluster) RedirectTarget(ownConns int, redirected bool) (addr string, ok bool) {
	ms := c.pushable()
	if len(ms) < 2 {
		return "", false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	total := 0
	loads := make([]int, len(ms))
	for i, m := range ms {
		if m.Self {
			loads[i] = ownConns // our own count is exact; gossip lags
		} else {
			loads[i] = c.load(m)
		}
		total += loads[i]
	}
	fair := float64(total+1) / float64(len(ms))
	margin := c.cfg.Margin
	if redirected {
		margin *= 3
	}
	if float64(ownConns+1) <= fair*(1+margin)+1 {
		return "", false
	}
	deficit := 0.0
	for i, m := range ms {
		if !m.Self && float64(loads[i]) < fair {
			deficit += fair - float64(loads[i])
		}
	}
	if deficit <= 0 {
		return "", false
	}
	pick := mrand.Float64() * deficit
	var target *Member
	for i, m := range ms {
		if m.Self || float64(loads[i]) >= fair {
			continue
		}
		target = &ms[i]
		if pick -= fair - float64(loads[i]); pick < 0 {
			break
		}
	}
	c.redirects[target.Name] = append(c.redirects[target.Name], time.Now())
	c.m.IncrCounter([]string{"cluster", "redirects"}, 1)
	return target.Meta.Push, true
}

// Excess is how many agents this node holds above the fair share plus
// the margin (0 when it is within), by the same reckoning as
// RedirectTarget.
func (c *Cluster) Excess(ownConns int) int {
	ms := c.pushable()
	if len(ms) < 2 {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	total := 0
	for _, m := range ms {
		if m.Self {
			total += ownConns
		} else {
			total += c.load(m)
		}
	}
	fair := float64(total) / float64(len(ms))
	return max(0, ownConns-int(fair*(1+c.cfg.Margin)+1))
}

// rebalance moves agents while this node has been above its fair share
// for RebalanceAfter, at most RebalanceRate per second; it runs on every
// refresh tick and returns the new "above since" time.
func (c *Cluster) rebalance(over time.Time) time.Time {
	own := c.cfg.Sessions()
	excess := c.Excess(own)
	switch {
	case excess == 0:
		return time.Time{}
	case over.IsZero():
		return time.Now()
	case time.Since(over) < c.cfg.RebalanceAfter:
		return over
	}
	n := min(excess, max(1, int(float64(c.cfg.RebalanceRate)*c.cfg.RefreshInterval.Seconds())))
	var addrs []string
	for i := range n {
		addr, ok := c.RedirectTarget(own-i, false)
		if !ok {
			break
		}
		addrs = append(addrs, addr)
	}
	if len(addrs) > 0 {
		moved := c.cfg.Move(addrs)
		c.m.IncrCounter([]string{"cluster", "rebalanced"}, float32(moved))
		c.log.Debug("cluster: moving agents to less loaded nodes", "agents", moved, "excess", excess)
	}
	return over
}

// PushNodes lists push addresses for WELCOME: this node first (the agent
// is connected to it), then the others least loaded first.
func (c *Cluster) PushNodes() []string {
	var self string
	var others []string
	for _, m := range c.pushable() {
		if m.Self {
			self = m.Meta.Push
		} else {
			others = append(others, m.Meta.Push)
		}
	}
	if self != "" {
		return append([]string{self}, others...)
	}
	return others
}
