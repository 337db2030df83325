package cluster

import (
	"cmp"
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
// node's live count. It returns the push address of the least loaded
// node when this one is above the fair share by more than the margin
// (and more than one agent, so small clusters do not flap), else ok is
// false and the agent stays. An agent that already comes from a REDIRECT
// is sent on only when this node is above the fair share by three times
// the margin: small disagreements between nodes' lagging views must not
// bounce agents around, large ones should still be corrected.
func (c *Cluster) RedirectTarget(ownConns int, redirected bool) (addr string, ok bool) {
	ms := c.pushable()
	if len(ms) < 2 {
		return "", false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	total := 0
	var least *Member
	leastLoad := 0
	for i, m := range ms {
		if m.Self {
			total += ownConns // our own count is exact; gossip lags
			continue
		}
		l := c.load(m)
		total += l
		if least == nil || l < leastLoad {
			least, leastLoad = &ms[i], l
		}
	}
	fair := float64(total+1) / float64(len(ms))
	margin := c.cfg.Margin
	if redirected {
		margin *= 3
	}
	if least == nil || float64(ownConns+1) <= fair*(1+margin)+1 || leastLoad >= ownConns {
		return "", false
	}
	c.redirects[least.Name] = append(c.redirects[least.Name], time.Now())
	c.m.IncrCounter([]string{"cluster", "redirects"}, 1)
	return least.Meta.Push, true
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
