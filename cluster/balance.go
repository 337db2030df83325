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
//
// The redirect times of a member are appended in order under c.mu, so
// both the expiry and the count are binary searches: this runs for every
// new agent, and a busy node redirects thousands per second.
func (c *Cluster) load(m Member) int {
	times := c.redirects[m.Name]
	// Forget what no figure can still be missing.
	old := time.Now().Add(-10 * time.Second)
	if i, _ := slices.BinarySearchFunc(times, old, time.Time.Compare); i > 0 {
		times = times[i:]
		c.redirects[m.Name] = times
	}
	cutoff := c.metaAt[m.Name].Add(-c.lag())
	base := m.Meta.Conns
	if m.Meta.At > 0 {
		// The figure's own time: its age, and the redirects it cannot
		// include (those sent from shortly before it was taken).
		taken := time.UnixMilli(m.Meta.At)
		cutoff = taken.Add(-500 * time.Millisecond)
		base += c.extrapolate(m.Name, taken)
	}
	i, _ := slices.BinarySearchFunc(times, cutoff, time.Time.Compare)
	return max(0, base+len(times)-i)
}

// extrapolate is how many agents a node has likely gained since its figure
// was taken, at the growth between its last two figures: while every node
// fills up, a node counting itself exactly and the others as they were
// seconds ago would otherwise see itself above its share and redirect
// new agents for nothing. A node gossips a new figure at most every
// RefreshInterval, and only when it changed, so past lag() without a
// newer one it has stopped changing: its figure is then taken as it is
// (which also bounds the harm of clocks that disagree). Caller holds c.mu.
func (c *Cluster) extrapolate(name string, taken time.Time) int {
	age := max(time.Since(taken), 0)
	if age > c.lag() {
		return 0
	}
	return int(c.growth[name] * age.Seconds())
}

// lag is how old a gossiped figure may be when it arrives, plus the time
// a redirected agent takes to connect.
func (c *Cluster) lag() time.Duration { return 2*c.cfg.RefreshInterval + 500*time.Millisecond }

// pushable are the members that take agents now, least loaded first.
func (c *Cluster) pushable() []Member {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []Member
	loads := map[string]int{}
	for _, m := range c.members {
		if m.Meta.Push != "" && !m.Meta.Draining {
			out = append(out, m)
			loads[m.Name] = c.load(m)
		}
	}
	slices.SortFunc(out, func(a, b Member) int {
		if d := cmp.Compare(loads[a.Name], loads[b.Name]); d != 0 {
			return d
		}
		return cmp.Compare(a.Name, b.Name)
	})
	return out
}

// loadView is this node's estimate of every pushable member's load, its
// own count exact.
type loadView struct {
	ms    []Member
	loads []int
	fair  float64
	min   int
}

// view estimates the loads; ok is false with fewer than two nodes.
func (c *Cluster) view(ownConns int) (v loadView, ok bool) {
	v.ms = c.pushable()
	if len(v.ms) < 2 {
		return v, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	total := 0
	v.loads = make([]int, len(v.ms))
	v.min = -1
	for i, m := range v.ms {
		if m.Self {
			v.loads[i] = ownConns // our own count is exact; gossip lags
		} else {
			v.loads[i] = c.load(m)
			if v.min < 0 || v.loads[i] < v.min {
				v.min = v.loads[i]
			}
		}
		total += v.loads[i]
	}
	v.fair = float64(total) / float64(len(v.ms))
	return v, true
}

// pick draws a node below the fair share, weighted by how far below it
// is, and counts a redirect to it. Drawing rather than always naming the
// least loaded node matters when several nodes redirect at once: with
// views that lag by a gossip round they would all pick the same node and
// overshoot it.
func (c *Cluster) pick(v loadView) (addr string, ok bool) {
	deficit := 0.0
	for i, m := range v.ms {
		if !m.Self && float64(v.loads[i]) < v.fair {
			deficit += v.fair - float64(v.loads[i])
		}
	}
	if deficit <= 0 {
		return "", false
	}
	draw := mrand.Float64() * deficit
	var target *Member
	for i, m := range v.ms {
		if m.Self || float64(v.loads[i]) >= v.fair {
			continue
		}
		target = &v.ms[i]
		if draw -= v.fair - float64(v.loads[i]); draw < 0 {
			break
		}
	}
	c.mu.Lock()
	c.redirects[target.Name] = append(c.redirects[target.Name], time.Now())
	c.mu.Unlock()
	c.m.redirects.Inc()
	return target.Meta.Push, true
}

// RedirectTarget decides where a new agent should go. ownConns is this
// node's live count. When this node, with the agent, would be above the
// fair share by more than the margin (and more than one agent, so small
// clusters do not flap), it returns the push address of a node below the
// fair share (pick); else ok is false and the agent stays. An agent that
// already comes from a REDIRECT is sent on only when this node is above
// the fair share by three times the margin: small disagreements between
// nodes' lagging views must not bounce agents around, large ones should
// still be corrected.
func (c *Cluster) RedirectTarget(ownConns int, redirected bool) (addr string, ok bool) {
	v, ok := c.view(ownConns + 1)
	if !ok {
		return "", false
	}
	margin := c.cfg.Margin
	if redirected {
		margin *= 3
	}
	if float64(ownConns+1) <= v.fair*(1+margin)+1 {
		return "", false
	}
	return c.pick(v)
}

// Excess is how many agents this node should hand to others: those above
// the fair share plus the margin; or, when some node is below the fair
// share by more than the margin, those above the fair share (up to what
// that node lacks). So the cluster settles with every node within the
// margin of even, not only the busiest ones.
func (c *Cluster) Excess(ownConns int) int {
	v, ok := c.view(ownConns)
	if !ok {
		return 0
	}
	m := c.cfg.Margin
	if over := ownConns - int(v.fair*(1+m)+1); over > 0 {
		return over
	}
	if lack := int(v.fair*(1-m)) - 1 - v.min; lack > 0 && float64(ownConns) > v.fair+1 {
		return min(lack, ownConns-int(v.fair+1))
	}
	return 0
}

// rebalance moves agents while this node has had an excess for
// RebalanceAfter, at most RebalanceRate per second; it runs on every
// refresh tick and returns the new "excess since" time.
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
		v, ok := c.view(own - i)
		if !ok {
			break
		}
		addr, ok := c.pick(v)
		if !ok {
			break
		}
		addrs = append(addrs, addr)
	}
	if len(addrs) > 0 {
		moved := c.cfg.Move(addrs)
		c.m.rebalanced.Add(float64(moved))
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
