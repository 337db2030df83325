package gateway

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/dpgate/dpgate/cluster"
	"github.com/dpgate/dpgate/internal/admin"
	"github.com/dpgate/dpgate/internal/config"
	"github.com/dpgate/dpgate/tlsconf"
)

// newCluster builds the cluster part when cluster.bind is set, on the
// gossip sockets from ls; it joins in Start. The push routing between
// nodes is built with the push server (newPush).
func (g *Gateway) newCluster(ls Listeners) error {
	cc := g.cfg.Cluster
	if cc.Bind == "" {
		return nil
	}
	keys, err := clusterKeys(g.cfg)
	if err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	cfg := cluster.Config{
		Name:          g.cfg.Node.Name,
		Stream:        ls.ClusterTCP,
		Packets:       ls.ClusterUDP,
		Bind:          cc.Bind,
		Advertise:     cc.Advertise,
		Join:          cc.Join,
		PeersFile:     filepath.Join(g.cfg.Node.DataDir, PeersFile),
		FailedFile:    filepath.Join(g.cfg.Node.DataDir, FailedFile),
		SecretKeys:    keys,
		Meta:          g.clusterMeta,
		State:         allowState{g.allow},
		Margin:        float64(cc.Margin),
		ProbeInterval: time.Duration(cc.ProbeInterval),
		OnMessage:     g.clusterMessage,
		Registerer:    g.tel.Registry,
		Logger:        g.log,
		ConflictAfter: g.conflictAfter,
	}
	if g.pushEnabled() && cc.RebalanceRate > 0 {
		// The push server is built after the cluster; these run once it
		// serves.
		cfg.Move = func(addrs []string) int { return g.push.Move(addrs) }
		cfg.Sessions = func() int { return g.push.Sessions() }
		cfg.RebalanceRate = cc.RebalanceRate
		cfg.RebalanceAfter = time.Duration(cc.RebalanceAfter)
	}
	c, err := cluster.New(cfg)
	if err != nil {
		return fmt.Errorf("gateway: cluster: %w", err)
	}
	g.cluster = c
	if ls.ClusterTCP != nil {
		g.clusterAddr = ls.ClusterTCP.Addr().String()
	}
	// Every local allow-list change goes to the other nodes at once.
	g.allow.OnChange(func(e tlsconf.Entry) {
		b, _ := json.Marshal([]tlsconf.Entry{e})
		c.BroadcastState(b)
	})
	g.add(part{name: "cluster",
		start: func() error {
			if err := c.Start(); err != nil {
				return err
			}
			g.log.Info("cluster started", "addr", g.clusterAddr, "seeds", cc.Join, "encrypted", keys != nil, "gossip_keys", len(keys))
			return nil
		},
		shutdown: func(context.Context) error { return g.leaveCluster() },
		close:    c.Close,
	})
	return nil
}

// PeersFile, in data_dir, remembers the other nodes' gossip addresses, so
// a restarted node finds the cluster when its seeds are down
// (cluster.Config.PeersFile).
const PeersFile = "cluster-peers"

// FailedFile, in data_dir, keeps the nodes this one saw fail, so a
// restart or an upgrade lists them again (cluster.Config.FailedFile).
const FailedFile = "cluster-failed"

// clusterKeys reads cluster.secret_key_file (none: nil): one base64 key
// of 16, 24 or 32 bytes per line, the first encrypting, every one
// decrypting (blank lines and # comments skipped), so a key is rotated
// with reloads (docs/CLUSTER.md).
func clusterKeys(cfg *config.Config) ([][]byte, error) {
	file := cfg.Cluster.SecretKeyFile
	if file == "" {
		return nil, nil
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("cluster.secret_key_file: %w", err)
	}
	var keys [][]byte
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		key, err := base64.StdEncoding.DecodeString(line)
		if err != nil || (len(key) != 16 && len(key) != 24 && len(key) != 32) {
			return nil, fmt.Errorf("cluster.secret_key_file %s: line %d: want base64 of 16, 24 or 32 bytes (e.g. (umask 077; openssl rand -base64 32 > FILE))", file, i+1)
		}
		keys = append(keys, key)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("cluster.secret_key_file %s holds no key (e.g. (umask 077; openssl rand -base64 32 > FILE))", file)
	}
	return keys, nil
}

// newDNS builds the DNS part: answers for the push service from the
// cluster's view of its nodes.
func (g *Gateway) newDNS(ls Listeners) error {
	if g.cluster == nil || ls.DNSUDP == nil {
		return nil
	}
	d := cluster.NewDNS(g.cluster, g.cfg.Cluster.DNS.Domain)
	g.dnsAddr = ls.DNSUDP.LocalAddr().String()
	g.add(part{name: "dns",
		serve: []func() error{
			func() error {
				g.log.Info("DNS listening", "addr", g.dnsAddr, "domain", g.cfg.Cluster.DNS.Domain)
				d.ServeUDP(ls.DNSUDP)
				return nil
			},
			func() error { d.ServeTCP(ls.DNSTCP); return nil },
		},
		close: closeAll(ls.DNSUDP, ls.DNSTCP),
	})
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
		m.Capacity = g.push.MaxConnections() // a reload may change it
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
	if c := g.cluster; c != nil {
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

// shutdownMsg tells the other nodes that a device said it shuts down.
type shutdownMsg struct {
	Device string    `json:"shutdown"`
	At     time.Time `json:"at"`
}

// clusterMessage handles another node's message: a device's shutdown
// notice, or the console's switch of agent certificate validation.
func (g *Gateway) clusterMessage(b []byte) {
	var m struct {
		shutdownMsg
		validateMsg
	}
	if err := json.Unmarshal(b, &m); err != nil || (m.Device == "" && m.Validate == nil) {
		g.log.Warn("cluster: unknown message from a node", "bytes", len(b))
		return
	}
	if m.Validate != nil {
		g.setValidateAgentCerts(*m.Validate)
	}
	if m.Device != "" && g.push != nil {
		g.push.ShutDown(m.Device, m.At)
	}
}

// leaveCluster leaves gracefully: peers see a leave, not a failure. The
// leave message gets 2 s of its own, whatever the drain before it used
// of the shutdown's time. A leave not confirmed by then is a warning, not
// a failed shutdown: the node has stopped, and its peers handle it as
// they handle a failure, a few seconds later.
func (g *Gateway) leaveCluster() error {
	c := g.cluster
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := c.Shutdown(ctx)
	if errors.Is(err, cluster.ErrLeaveUnconfirmed) {
		g.log.Warn("cluster: leave not confirmed within 2s; peers will see a failure", "err", err)
		return nil
	}
	return err
}

// ClusterMember is a node in /v1/status (and dpgate members --json): what
// it gossips, under the names the rest of the API uses, not the short
// keys of the gossip itself (cluster.Meta).
type ClusterMember struct {
	Name      string  `json:"name"`
	Addr      string  `json:"addr"` // gossip address
	Self      bool    `json:"self,omitempty"`
	State     string  `json:"state"` // alive or draining; failed in dpgate members --json
	Version   string  `json:"version,omitempty"`
	Push      string  `json:"push,omitempty"`  // push server address
	Proxy     string  `json:"proxy,omitempty"` // proxy listener address
	Admin     string  `json:"admin,omitempty"` // admin API address
	Pin       string  `json:"pin,omitempty"`   // its certificate's SPKI pin
	Agents    int     `json:"agents"`          // push sessions
	Capacity  int     `json:"capacity,omitempty"`
	Load      float64 `json:"load"`             // 1-minute load per core
	Uplink    string  `json:"uplink,omitempty"` // the worst uplink verdict
	RTTMillis float64 `json:"rtt_ms,omitempty"` // memberlist's probes, smoothed
	// FailedSince is when a failed node was declared dead (dpgate
	// members --json; /v1/status lists those in cluster_failed).
	FailedSince *time.Time `json:"failed_since,omitempty"`
}

func (g *Gateway) clusterStatus() []ClusterMember {
	c := g.cluster
	if c == nil {
		return nil
	}
	var out []ClusterMember
	for _, m := range c.Members() {
		state := "alive"
		if m.Meta.Draining {
			state = "draining"
		}
		out = append(out, ClusterMember{Name: m.Name, Addr: m.Addr, Self: m.Self, State: state,
			Version: m.Meta.Version, Push: m.Meta.Push, Proxy: m.Meta.Proxy, Admin: m.Meta.Admin, Pin: m.Meta.Pin,
			Agents: m.Meta.Conns, Capacity: m.Meta.Capacity, Load: m.Meta.CPU, Uplink: m.Meta.Uplink,
			RTTMillis: m.RTT.Seconds() * 1000})
	}
	return out
}

// FailedMember is a node in /v1/status's cluster_failed: declared dead,
// not back yet (cluster.Failed).
type FailedMember struct {
	Name  string    `json:"name"`
	Addr  string    `json:"addr"`
	Push  string    `json:"push,omitempty"`
	Since time.Time `json:"since"`
}

func (g *Gateway) clusterFailed() []FailedMember {
	if g.cluster == nil {
		return nil
	}
	var out []FailedMember
	for _, f := range g.cluster.Failed() {
		out = append(out, FailedMember{Name: f.Name, Addr: f.Addr, Push: f.Meta.Push, Since: f.Since})
	}
	return out
}

// NameConflict is a node name in /v1/status's cluster_conflicts: claimed
// from two gossip addresses.
type NameConflict struct {
	Name  string    `json:"name"`
	Addr  string    `json:"addr"`  // the node claiming it anew
	Known string    `json:"known"` // where this node knew it (its own address, for its own name)
	Since time.Time `json:"since"`
}

func (g *Gateway) clusterConflicts() []NameConflict {
	if g.cluster == nil {
		return nil
	}
	var out []NameConflict
	for _, c := range g.cluster.Conflicts() {
		out = append(out, NameConflict{Name: c.Name, Addr: c.Addr, Known: c.Known, Since: c.Since.UTC()})
	}
	return out
}

// forgetNode drops a failed node on every node (dpgate members forget,
// the API and the console's Forget): by says who asked, for the log. Its
// errors carry the API's status.
func (g *Gateway) forgetNode(node, by string) error {
	if g.cluster == nil {
		return admin.Error(http.StatusNotFound, errors.New("not in a cluster (cluster.bind is not set)"))
	}
	switch err := g.cluster.Forget(node); {
	case errors.Is(err, cluster.ErrAlive):
		return admin.Error(http.StatusConflict, fmt.Errorf("%s is alive: stop it, and it leaves in good order", node))
	case errors.Is(err, cluster.ErrNotFailed):
		return admin.Error(http.StatusNotFound, fmt.Errorf("%s is not listed as failed on %s (dpgate members)", node, g.cfg.Node.Name))
	case err != nil:
		return err
	}
	g.log.Warn("cluster: failed node forgotten on every node; what only it held is given up", "node", node, "by", by)
	return nil
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
