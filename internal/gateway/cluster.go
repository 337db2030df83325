package gateway

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/dpgate/dpgate/cluster"
	"github.com/dpgate/dpgate/tlsconf"
)

// routerSweep is the router's sweep interval; 0 is its default (30 s).
// Tests lengthen it to see what happens before the sweep repairs it.
var routerSweep time.Duration

// startCluster joins the cluster when cluster.bind is set. memberlist
// binds its own sockets, so this runs in Start, not in New.
func (g *Gateway) startCluster() error {
	cc := g.cfg.Cluster
	if cc.Bind == "" {
		return nil
	}
	var key []byte
	if cc.SecretKeyFile != "" {
		s, err := tlsconf.ReadSecretFile(cc.SecretKeyFile)
		if err != nil {
			return fmt.Errorf("gateway: cluster.secret_key_file: %w", err)
		}
		if key, err = base64.StdEncoding.DecodeString(strings.TrimSpace(s)); err != nil || (len(key) != 16 && len(key) != 24 && len(key) != 32) {
			return fmt.Errorf("gateway: cluster.secret_key_file %s: want base64 of 16, 24 or 32 bytes (e.g. openssl rand -base64 32)", cc.SecretKeyFile)
		}
	}
	cfg := cluster.Config{
		Name:          g.cfg.Node.Name,
		Bind:          cc.Bind,
		Advertise:     cc.Advertise,
		Join:          cc.Join,
		SecretKey:     key,
		Meta:          g.clusterMeta,
		State:         allowState{g.allow},
		Margin:        float64(cc.Margin),
		ProbeInterval: time.Duration(cc.ProbeInterval),
		OnMessage:     g.clusterMessage,
		Metrics:       g.tel.Metrics,
		Logger:        g.log,
	}
	if g.push != nil && cc.RebalanceRate > 0 {
		cfg.Move, cfg.Sessions, cfg.RebalanceRate = g.push.Move, g.push.Sessions, cc.RebalanceRate
	}
	c, err := cluster.Start(cfg)
	if err != nil {
		return fmt.Errorf("gateway: cluster: %w", err)
	}
	g.cluster.Store(c)
	if g.push != nil {
		r, err := cluster.NewRouter(cluster.RouterConfig{
			SweepInterval: routerSweep,
			Cluster:       c,
			Local:         g.push,
			Identity:      g.id,
			KeyExchange:   g.keyExchange,
			Metrics:       g.tel.Metrics,
			Logger:        g.log,
		})
		if err != nil {
			c.Close()
			return fmt.Errorf("gateway: cluster: %w", err)
		}
		g.router.Store(r)
	}
	// Every local allow-list change goes to the other nodes at once.
	g.allow.OnChange(func(e tlsconf.Entry) {
		b, _ := json.Marshal([]tlsconf.Entry{e})
		c.BroadcastState(b)
	})
	g.log.Info("cluster started", "bind", cc.Bind, "seeds", cc.Join, "encrypted", key != nil)
	return nil
}

// clusterMeta is what this node gossips.
func (g *Gateway) clusterMeta() cluster.Meta {
	m := cluster.Meta{Version: Version().Version, CPU: loadPerCore(), Draining: g.draining.Load(), Uplink: g.uplinkVerdict(),
		Boot: g.started.UnixNano()}
	if g.pushAddr != "" {
		m.Push = g.advertised(g.pushAddr)
		m.Pin = g.id.Pin()
		m.Conns = g.push.Sessions()
		m.Capacity = g.cfg.Push.MaxConnections
	}
	if g.adminAddr != "" {
		m.Admin = g.advertised(g.adminAddr)
	}
	return m
}

// advertised replaces a wildcard host in a listener address with the
// address peers reach this node at.
func (g *Gateway) advertised(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(host); ip != nil && !ip.IsUnspecified() {
		return addr
	}
	for _, a := range []string{g.cfg.Cluster.Advertise, g.cfg.Cluster.Bind} {
		if h, _, err := net.SplitHostPort(a); err == nil {
			if ip := net.ParseIP(h); ip != nil && !ip.IsUnspecified() {
				return net.JoinHostPort(h, port)
			}
		}
	}
	if c := g.cluster.Load(); c != nil {
		for _, m := range c.Members() {
			if m.Self {
				if h, _, err := net.SplitHostPort(m.Addr); err == nil {
					return net.JoinHostPort(h, port)
				}
			}
		}
	}
	return addr
}

// loadPerCore is the 1-minute load average divided by the core count.
func loadPerCore() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f, _ := strconv.ParseFloat(strings.Fields(string(b))[0], 64)
	return f / float64(runtime.NumCPU())
}

// pushRedirect and pushNodes are the push server's cluster hooks; before
// the cluster runs (or without one) agents stay and WELCOME names only
// this node.
func (g *Gateway) pushRedirect(sessions int, redirected bool) (string, bool) {
	if c := g.cluster.Load(); c != nil {
		return c.RedirectTarget(sessions, redirected)
	}
	return "", false
}

func (g *Gateway) pushNodes() []string {
	if c := g.cluster.Load(); c != nil {
		if nodes := c.PushNodes(); len(nodes) > 0 {
			return nodes
		}
	}
	if g.pushAddr != "" {
		return []string{g.advertised(g.pushAddr)}
	}
	return nil
}

// shutdownMsg tells the other nodes that a device said it shuts down.
type shutdownMsg struct {
	Device string    `json:"shutdown"`
	At     time.Time `json:"at"`
}

// clusterMessage handles a broadcast that is not an allow-list change.
func (g *Gateway) clusterMessage(b []byte) {
	var m shutdownMsg
	if err := json.Unmarshal(b, &m); err != nil || m.Device == "" {
		g.log.Warn("cluster: unknown message from a node", "bytes", len(b))
		return
	}
	if g.push != nil {
		g.push.ShutDown(m.Device, m.At)
	}
}

// The push server's cluster hooks, which do nothing until the router runs.

func (g *Gateway) isPeer(pin string) bool {
	r := g.router.Load()
	return r != nil && r.IsPeer(pin)
}

func (g *Gateway) servePeer(c net.Conn) {
	if r := g.router.Load(); r != nil {
		r.ServeConn(c)
		return
	}
	c.Close()
}

func (g *Gateway) sessionChanged(device string, up bool, since time.Time) {
	if r := g.router.Load(); r != nil {
		r.SessionChanged(device, up, since)
	}
}

func (g *Gateway) pushAcked(device string, id [16]byte) {
	if r := g.router.Load(); r != nil {
		r.Acked(device, id)
	}
}

// leaveCluster leaves gracefully: peers see a leave, not a failure. The
// leave message gets 2 s of its own, whatever the drain before it used
// of the shutdown's time.
func (g *Gateway) leaveCluster() error {
	c := g.cluster.Load()
	if c == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return c.Shutdown(ctx)
}

// ClusterMember is a node in /v1/status.
type ClusterMember struct {
	Name      string       `json:"name"`
	Addr      string       `json:"addr"`
	Self      bool         `json:"self,omitempty"`
	RTTMillis float64      `json:"rtt_ms,omitempty"` // memberlist's probes, smoothed
	Meta      cluster.Meta `json:"meta"`
}

func (g *Gateway) clusterStatus() []ClusterMember {
	c := g.cluster.Load()
	if c == nil {
		return nil
	}
	var out []ClusterMember
	for _, m := range c.Members() {
		out = append(out, ClusterMember{Name: m.Name, Addr: m.Addr, Self: m.Self, RTTMillis: m.RTT.Seconds() * 1000, Meta: m.Meta})
	}
	return out
}

// allowState replicates the agent allow-list: JSON arrays of entries,
// merged by version with tombstones (tlsconf.AllowList.Merge).
type allowState struct{ allow *tlsconf.AllowList }

func (s allowState) LocalState() []byte {
	b, _ := json.Marshal(s.allow.Snapshot())
	return b
}

func (s allowState) Merge(b []byte) error {
	var es []tlsconf.Entry
	if err := json.Unmarshal(b, &es); err != nil {
		return fmt.Errorf("allow-list state: %w", err)
	}
	_, err := s.allow.Merge(es)
	return err
}

var _ cluster.Replicated = allowState{}
