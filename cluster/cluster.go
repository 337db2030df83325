// Package cluster joins dpgate nodes with hashicorp/memberlist: each node
// gossips its metadata (addresses, live connections, capacity, load),
// agents are sent to the least busy node (REDIRECT from a node above its
// fair share), WELCOME lists the push servers in failover order, and an
// optional DNS server answers for the push service, least loaded first.
//
// Pieces: meta.go is the metadata a node advertises; balance.go the
// least-busy decision; dns.go the DNS answers; this file runs memberlist
// (encrypted gossip, periodic re-join of the seeds so a long partition
// heals by itself) and keeps the view of the peers; failed.go keeps the
// nodes that failed, the same on every node. Between nodes, over
// the push port: route.go keeps each device's queue on its owners and
// forwards to the node holding it; peer.go is that protocol's client and
// server; remove.go removes a device on every node; query.go carries
// the questions one node asks all the others (AskAll).
package cluster

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dpgate/dpgate/internal/ratelimit"
	"github.com/dpgate/dpgate/internal/series"
	"github.com/dpgate/dpgate/tlsconf"
)

// Defaults of Config's zero fields, written here once; internal/config
// fills the configuration file's keys from them.
const (
	DefaultRejoinInterval  = 30 * time.Second
	DefaultRefreshInterval = time.Second
	DefaultMargin          = 0.05
	DefaultProbeInterval   = 400 * time.Millisecond
	DefaultRebalanceRate   = 50
	DefaultRebalanceAfter  = 5 * time.Second
)

// Config configures a node. Zero values mean the defaults in comments.
type Config struct {
	Name string // node name, unique in the cluster. Required.
	// Stream and Packets are the gossip sockets, TCP and UDP on the same
	// port (the gateway opens them, so an upgrade passes them on like its
	// other sockets); the Cluster owns them from New on. When they are
	// nil, Start opens them on Bind.
	Stream    net.Listener
	Packets   net.PacketConn
	Bind      string   // gossip host:port (TCP and UDP), when Stream and Packets are nil
	Advertise string   // host:port peers use. Default: memberlist's choice.
	Join      []string // seeds (host:port)
	// PeersFile, when set, keeps the gossip addresses of the other live
	// nodes, rewritten when they change; after a restart the node joins
	// them as well as Join, so it finds the cluster when its seeds are
	// down or name only some of the nodes (Serf's snapshot does this).
	PeersFile string
	// FailedFile, when set, keeps the nodes declared dead (Failed),
	// rewritten when they change, so a restart or an upgrade lists them
	// again until they come back, leave, are forgotten or FailedKept
	// passes.
	FailedFile string
	// ConflictAfter is how long a node at another address must go on
	// claiming a name before the conflict is reported (Conflicts, an
	// error in the log): a node moved to a new address conflicts with its
	// old entry only until that is declared dead and its name reclaimed,
	// some 10-20 s. Default: 1 minute.
	ConflictAfter time.Duration
	// SecretKeys authenticate and encrypt gossip (16, 24 or 32 bytes
	// each): the first encrypts, every one decrypts, so a key is rotated
	// without a restart (SetSecretKeys). Default: none; the gateway's
	// configuration requires one with a bind address.
	SecretKeys [][]byte
	// Meta returns this node's current metadata; called on every gossip
	// of it. Required.
	Meta func() Meta
	// RejoinInterval: the seeds are joined again this often, so a
	// partition longer than GossipToTheDeadTime heals. Default: 30s.
	RejoinInterval time.Duration
	// RefreshInterval: metadata changes are gossiped at most this often.
	// Default: 1s.
	RefreshInterval time.Duration
	// Margin above the fair share before a node redirects new agents.
	// Default: 0.05 (with gossip lag, a node can end slightly above its
	// threshold, so the margin must be below the evenness one wants).
	Margin float64
	// Rebalancing: when Move is set and this node stays above the fair
	// share by the margin for RebalanceAfter (default 5s), it asks up to
	// RebalanceRate agents per second (default 50) to move: Move is given
	// one target push address per agent and returns how many it told.
	// Sessions is this node's exact agent count.
	Move           func(addrs []string) int
	Sessions       func() int
	RebalanceRate  int
	RebalanceAfter time.Duration
	// State, when set, is small shared state (the agent allow-list) kept
	// the same on every node: changes go out through BroadcastState at
	// once, and the whole state is exchanged in memberlist's push/pull.
	State Replicated
	// OnMessage receives the other nodes' Broadcast messages.
	OnMessage func([]byte)
	// ProbeInterval: how often memberlist probes a peer; the probe timeout
	// is half of it. Default: 400ms.
	ProbeInterval time.Duration
	// Tune adjusts memberlist's configuration (tests tighten timings, or
	// wrap the Transport to cut the network).
	Tune func(*memberlist.Config)

	// Registerer takes the cluster's metrics (docs/METRICS.md). Default:
	// a registry of its own, read by nobody.
	Registerer prometheus.Registerer
	Logger     *slog.Logger // default slog.Default()
}

// Replicated is state every node holds a copy of. Merging must be
// idempotent and order-independent (versions and tombstones), since
// messages arrive more than once and in any order.
type Replicated interface {
	// LocalState is the whole state, for a push/pull exchange: a JSON
	// array, to which the cluster adds an element of its own (an object
	// with the key "failed_nodes", taken out before Merge).
	LocalState() []byte
	// Merge applies a peer's whole state or one broadcast change.
	Merge(b []byte) error
}

// Member is a live node and what it advertises.
type Member struct {
	Name string
	Addr string // gossip address
	Meta Meta
	Self bool
	// RTT is the smoothed round-trip time of memberlist's probes to it
	// (passive link measurement between nodes); 0 until measured.
	RTT time.Duration
}

// Cluster is this node's membership.
type Cluster struct {
	cfg Config
	log *slog.Logger
	m   *clusterMetrics
	ml  *memberlist.Memberlist

	mu      sync.Mutex
	members map[string]Member
	failed  map[string]Failed    // declared dead, not back yet (see Failed)
	cleared map[string]time.Time // left in good order or forgotten, not back yet (failed.go)
	leaving map[string]time.Time // nodes that announced a leave in good order
	// redirects and metaAt let load() add the agents redirected to a node
	// that its gossiped figure cannot include yet, so a burst of new
	// agents does not all go to the same "least loaded" node before
	// gossip catches up. Both are local times.
	redirects map[string][]time.Time
	metaAt    map[string]time.Time
	rtt       map[string]time.Duration // memberlist ping RTT, smoothed
	growth    map[string]float64       // agents per second between a node's last two figures
	lastSent  Meta                     // the metadata NodeMeta last handed to memberlist
	peers     []string                 // remembered gossip addresses (PeersFile), sorted
	failedAt  []byte                   // what FailedFile holds (rememberFailed)
	conflicts map[string]*Conflict     // by name and address claiming it (see Conflicts)

	joiningPeers atomic.Bool // a joinPeers attempt is running

	queue *memberlist.TransmitLimitedQueue

	mc *memberlist.Config // built by New, used by Start

	closeMu sync.Mutex // orders Start and Close
	closed  bool

	done chan struct{}
	wg   sync.WaitGroup
}

// New checks the configuration and builds the node; Start joins.
func New(cfg Config) (*Cluster, error) {
	if cfg.Name == "" || (cfg.Bind == "" && (cfg.Stream == nil || cfg.Packets == nil)) || cfg.Meta == nil {
		return nil, errors.New("cluster: Name, Meta, and Bind or the Stream and Packets sockets are required")
	}
	cfg.RejoinInterval = cmp.Or(cfg.RejoinInterval, DefaultRejoinInterval)
	cfg.RefreshInterval = cmp.Or(cfg.RefreshInterval, DefaultRefreshInterval)
	cfg.Margin = cmp.Or(cfg.Margin, DefaultMargin)
	cfg.ProbeInterval = cmp.Or(cfg.ProbeInterval, DefaultProbeInterval)
	cfg.RebalanceRate = cmp.Or(cfg.RebalanceRate, DefaultRebalanceRate)
	cfg.RebalanceAfter = cmp.Or(cfg.RebalanceAfter, DefaultRebalanceAfter)
	cfg.ConflictAfter = cmp.Or(cfg.ConflictAfter, DefaultConflictAfter)
	cfg.Registerer = cmp.Or[prometheus.Registerer](cfg.Registerer, prometheus.NewRegistry())
	cfg.Logger = cmp.Or(cfg.Logger, slog.Default())
	c := &Cluster{cfg: cfg, log: cfg.Logger, m: newClusterMetrics(cfg.Registerer), members: map[string]Member{}, failed: map[string]Failed{}, cleared: map[string]time.Time{}, leaving: map[string]time.Time{}, redirects: map[string][]time.Time{}, metaAt: map[string]time.Time{}, rtt: map[string]time.Duration{}, growth: map[string]float64{}, conflicts: map[string]*Conflict{}, done: make(chan struct{})}

	series.On(cfg.Registerer).GaugeFunc("dpgate_cluster_failed_nodes", "Nodes declared dead that have not come back or left since (kept a day): they may hold devices and pushes the live nodes do not know of.",
		func() float64 { return float64(len(c.Failed())) })
	series.On(cfg.Registerer).GaugeFunc("dpgate_cluster_name_conflicts", "Node names claimed from two addresses for over a minute (this node's or another's): node names must be unique, and two nodes of one name cannot be one cluster.",
		func() float64 { return float64(len(c.Conflicts())) })

	mc := memberlist.DefaultLANConfig()
	mc.Name = cfg.Name
	mc.AdvertisePort = 0 // the port bound, unless Advertise says otherwise
	if cfg.Advertise != "" {
		ah, ap, err := net.SplitHostPort(cfg.Advertise)
		if err != nil {
			return nil, fmt.Errorf("cluster: advertise %q: %w", cfg.Advertise, err)
		}
		mc.AdvertiseAddr = ah
		if mc.AdvertisePort, err = strconv.Atoi(ap); err != nil {
			return nil, fmt.Errorf("cluster: advertise port %q: %w", ap, err)
		}
	}
	// A LAN of branch servers: detect a dead node within a few seconds.
	mc.ProbeInterval = cfg.ProbeInterval
	mc.ProbeTimeout = cfg.ProbeInterval / 2
	mc.SuspicionMult = 3
	mc.GossipInterval = 100 * time.Millisecond
	mc.PushPullInterval = 15 * time.Second
	// A node restarted with a new address may take its name back soon.
	mc.DeadNodeReclaimTime = 10 * time.Second
	if len(cfg.SecretKeys) > 0 {
		kr, err := memberlist.NewKeyring(cfg.SecretKeys, cfg.SecretKeys[0])
		if err != nil {
			return nil, fmt.Errorf("cluster: secret key: %w", err)
		}
		mc.Keyring = kr
	}
	mc.Delegate = delegate{c}
	mc.Ping = pings{c}
	mc.Events = events{c}
	mc.Conflict = events{c}
	mc.Logger = log.New(&memberlistLog{l: c.log, every: map[string]*ratelimit.Every{}}, "", 0)
	c.queue = &memberlist.TransmitLimitedQueue{RetransmitMult: 3, NumNodes: func() int {
		c.mu.Lock() // the event-kept member map: memberlist may call this during Create
		defer c.mu.Unlock()
		return max(1, len(c.members))
	}}
	c.mc = mc
	return c, nil
}

// Start creates the memberlist on the gossip sockets (opening them on
// Bind when none were given), joins the seeds, and starts the refresh and
// re-join loops. It is called once.
func (c *Cluster) Start() error {
	cfg, mc := c.cfg, c.mc
	if cfg.Stream == nil {
		var err error
		if cfg.Stream, cfg.Packets, err = Listen(cfg.Bind); err != nil {
			return err
		}
	}
	c.peers = readPeers(cfg.PeersFile, c.log) // before the loop that reads them
	c.readFailed()                            // before memberlist's events change them
	mc.Transport = newTransport(cfg.Stream, cfg.Packets, c.log.Warn)
	if cfg.Tune != nil {
		cfg.Tune(mc) // may wrap the transport
	}
	c.closeMu.Lock()
	if c.closed {
		c.closeMu.Unlock()
		return mc.Transport.Shutdown()
	}
	ml, err := memberlist.Create(mc)
	if err != nil {
		c.closeMu.Unlock()
		mc.Transport.Shutdown()
		return fmt.Errorf("cluster: %w", err)
	}
	c.ml = ml
	c.wg.Add(1)
	go c.loop() // exits when done is closed
	c.closeMu.Unlock()
	// The seeds may take a while to answer: Close does not wait for that.
	if len(cfg.Join) > 0 {
		if _, err := ml.Join(cfg.Join); err != nil {
			c.log.Warn("cluster: no seed answered yet; will retry", "seeds", cfg.Join, "err", err)
		} else {
			c.logJoined(true)
		}
	}
	c.joinPeers()
	return nil
}

// joinPeers joins the remembered peers (PeersFile) that are not seeds, in
// the background and one attempt at a time: memberlist tries every
// address in turn, and one that no longer answers may take its TCP
// timeout (10 s) to fail, which neither Start nor the refresh loop waits
// for. Close does not wait for it either; it ends within that timeout
// per address.
func (c *Cluster) joinPeers() {
	c.mu.Lock()
	var peers []string
	for _, p := range c.peers {
		if !slices.Contains(c.cfg.Join, p) {
			peers = append(peers, p)
		}
	}
	c.mu.Unlock()
	if len(peers) == 0 || !c.joiningPeers.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer c.joiningPeers.Store(false)
		alone := c.ml.NumMembers() == 1 // the periodic re-join of a node with company says nothing
		if _, err := c.ml.Join(peers); err == nil && alone {
			c.logJoined(false)
		}
	}()
}

// readPeers reads a PeersFile: one host:port a line. A missing file is
// no peers; a damaged one is logged and ignored (Join still works).
func readPeers(file string, log *slog.Logger) []string {
	if file == "" {
		return nil
	}
	b, err := os.ReadFile(file)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		log.Warn("cluster: the remembered peers cannot be read; joining the seeds alone", "file", file, "err", err)
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		if line = strings.TrimSpace(line); line == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(line); err != nil {
			log.Warn("cluster: the remembered peers are damaged; joining the seeds alone", "file", file, "line", line)
			return nil
		}
		out = append(out, line)
	}
	slices.Sort(out)
	return out
}

// rememberPeers writes the other live nodes' gossip addresses to
// PeersFile when they changed (a temporary file, synced, then renamed:
// a crash leaves the old list or the new one). Nodes that left or failed
// drop out; an empty list is not written, so a node cut off from all the
// others keeps the addresses it needs to find them again.
func (c *Cluster) rememberPeers() {
	if c.cfg.PeersFile == "" {
		return
	}
	var addrs []string
	for _, m := range c.Members() {
		if !m.Self {
			addrs = append(addrs, m.Addr)
		}
	}
	slices.Sort(addrs)
	c.mu.Lock()
	same := slices.Equal(addrs, c.peers)
	c.mu.Unlock()
	if len(addrs) == 0 || same {
		return
	}
	if err := tlsconf.WriteFileAtomic(c.cfg.PeersFile, []byte(strings.Join(addrs, "\n")+"\n"), 0o600); err != nil {
		c.log.Warn("cluster: remembering the peers", "file", c.cfg.PeersFile, "err", err)
		return
	}
	c.mu.Lock()
	c.peers = addrs
	c.mu.Unlock()
}

// logJoined says what a join that succeeded reached. Every node is
// usually given the same seeds, its own address among them, so the first
// node up "joins" only itself: that is said once, at start, and the
// retries while alone are logged at debug level.
func (c *Cluster) logJoined(atStart bool) {
	c.mu.Lock()
	peers := slices.Clone(c.peers)
	c.mu.Unlock()
	switch n := c.ml.NumMembers(); {
	case n > 1:
		c.log.Info("cluster: joined", "members", n)
	case atStart && len(peers) > 0:
		c.log.Info("cluster: alone so far (the seeds that answered were this node); joining the peers it remembers too", "seeds", c.cfg.Join, "peers", peers)
	case atStart:
		c.log.Info("cluster: alone so far (the seeds that answered were this node); trying them every second", "seeds", c.cfg.Join)
	default:
		c.log.Debug("cluster: still alone; seeds tried", "seeds", c.cfg.Join)
	}
}

// Listen opens the gossip sockets on addr: TCP, and UDP on the same port.
// When addr's port is 0, the port TCP got may be taken for UDP by another
// program: it then tries another port, up to 20 times (the DNS listener
// pairs its sockets the same way).
func Listen(addr string) (net.Listener, net.PacketConn, error) {
	var err error
	for range 20 {
		var ln net.Listener
		if ln, err = net.Listen("tcp", addr); err != nil {
			break
		}
		var pc net.PacketConn
		if pc, err = net.ListenPacket("udp", ln.Addr().String()); err == nil {
			return ln, pc, nil
		}
		ln.Close()
		if _, port, _ := net.SplitHostPort(addr); port != "0" {
			break
		}
	}
	return nil, nil, fmt.Errorf("cluster: %w", err)
}

// loop gossips metadata changes and re-joins the seeds periodically.
func (c *Cluster) loop() {
	defer c.wg.Done()
	refresh := time.NewTicker(c.cfg.RefreshInterval)
	defer refresh.Stop()
	rejoin := time.NewTicker(c.cfg.RejoinInterval)
	defer rejoin.Stop()
	var over time.Time     // since when this node is above its fair share
	var lastJoin time.Time // the last join attempt while alone
	for {
		select {
		case <-c.done:
			return
		case <-refresh.C:
			// Compare with what was last gossiped (NodeMeta records it), not
			// with an earlier reading: a change made before this loop first
			// ran must still go out.
			// Meta is read outside the lock: it may ask for Members.
			now := c.cfg.Meta()
			c.mu.Lock()
			stale := now != c.lastSent
			c.mu.Unlock()
			if stale {
				if err := c.ml.UpdateNode(time.Second); err != nil {
					c.log.Debug("cluster: metadata update", "err", err)
				}
			}
			c.m.members.Set(float64(c.ml.NumMembers()))
			c.m.health.Set(float64(c.ml.GetHealthScore()))
			if c.cfg.Move != nil && c.cfg.Sessions != nil {
				over = c.rebalance(over)
			}
			// Alone with seeds configured (they were not up when this node
			// started, or this node was cut off): try them every second
			// rather than waiting for the next periodic re-join.
			if c.ml.NumMembers() == 1 && time.Since(lastJoin) >= time.Second {
				lastJoin = time.Now()
				if len(c.cfg.Join) > 0 {
					if _, err := c.ml.Join(c.cfg.Join); err == nil {
						c.logJoined(false)
					}
				}
				c.joinPeers()
			}
			c.rememberPeers()
			c.rememberFailed()
		case <-rejoin.C:
			if len(c.cfg.Join) > 0 {
				c.ml.Join(c.cfg.Join) // heals partitions; joining known nodes is harmless
			}
			c.joinPeers()
		}
	}
}

// Members returns the live nodes, this one included, by name.
func (c *Cluster) Members() []Member {
	c.mu.Lock()
	out := make([]Member, 0, len(c.members))
	for _, m := range c.members {
		m.RTT = c.rtt[m.Name]
		out = append(out, m)
	}
	c.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// SetSecretKeys replaces the gossip keys while the node runs: the first
// encrypts from now on, every one decrypts, the others are dropped. A key
// is rotated in three rounds over every node, each finished everywhere
// before the next, so no node ever sends with a key another cannot read:
// add the new key second; make it first; drop the old one. A node
// started without a key cannot take one without a restart.
func (c *Cluster) SetSecretKeys(keys [][]byte) error {
	kr := c.mc.Keyring
	if kr == nil {
		return errors.New("cluster: gossip was started without a key; adding one needs a restart")
	}
	if len(keys) == 0 {
		return errors.New("cluster: no gossip key given; gossip without one needs a restart")
	}
	for _, k := range keys {
		if err := memberlist.ValidateKey(k); err != nil {
			return fmt.Errorf("cluster: secret key: %w", err)
		}
	}
	for _, k := range keys {
		if err := kr.AddKey(k); err != nil {
			return fmt.Errorf("cluster: secret key: %w", err)
		}
	}
	if err := kr.UseKey(keys[0]); err != nil {
		return fmt.Errorf("cluster: secret key: %w", err)
	}
	for _, old := range kr.GetKeys() {
		if !slices.ContainsFunc(keys, func(k []byte) bool { return bytes.Equal(k, old) }) {
			if err := kr.RemoveKey(old); err != nil {
				return fmt.Errorf("cluster: secret key: %w", err)
			}
		}
	}
	return nil
}

// DefaultConflictAfter is Config.ConflictAfter's default.
const DefaultConflictAfter = time.Minute

// conflictGap: a conflict not seen again for this long is over.
const conflictGap = 30 * time.Second

// Conflict is a node name claimed from two addresses for longer than
// Config.ConflictAfter: two nodes were given the same name (machines
// cloned from one image share the host name, the gateway's default
// node name). They cannot be one cluster; each sees the other's gossip
// as a conflict and ignores it.
type Conflict struct {
	Name  string    // the name both claim
	Addr  string    // the gossip address of the node claiming it anew
	Known string    // the address this node knew it at (its own, for its own name)
	Since time.Time // first seen
	last  time.Time
	// logged is when the error was last logged (again every 10 minutes
	// while it lasts).
	logged time.Time
}

// conflictSeen records a claim of name from addr, known at known.
func (c *Cluster) conflictSeen(name, addr, known string, now time.Time) {
	key := name + " " + addr
	c.mu.Lock()
	cf := c.conflicts[key]
	if cf == nil || now.Sub(cf.last) > conflictGap {
		cf = &Conflict{Name: name, Addr: addr, Known: known, Since: now}
		c.conflicts[key] = cf
	}
	cf.last = now
	report := now.Sub(cf.Since) >= c.cfg.ConflictAfter && now.Sub(cf.logged) >= 10*time.Minute
	if report {
		cf.logged = now
	}
	c.mu.Unlock()
	if !report {
		return
	}
	if name == c.cfg.Name {
		c.log.Error("cluster: another node uses this node's name; node names must be unique (node.name, by default the host name, which machines cloned from one image share): the two cannot be one cluster",
			"name", name, "this", known, "other", addr, "since", cf.Since.UTC().Format(time.RFC3339))
		return
	}
	c.log.Error("cluster: two nodes use one name; node names must be unique (node.name, by default the host name, which machines cloned from one image share)",
		"name", name, "known_at", known, "other", addr, "since", cf.Since.UTC().Format(time.RFC3339))
}

// Conflicts returns the name conflicts that have lasted Config.ConflictAfter
// and are still seen, by name.
func (c *Cluster) Conflicts() []Conflict {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []Conflict
	for k, cf := range c.conflicts {
		switch {
		case now.Sub(cf.last) > conflictGap:
			delete(c.conflicts, k)
		case cf.last.Sub(cf.Since) >= c.cfg.ConflictAfter:
			out = append(out, *cf)
		}
	}
	slices.SortFunc(out, func(a, b Conflict) int {
		return cmp.Or(strings.Compare(a.Name, b.Name), strings.Compare(a.Addr, b.Addr))
	})
	return out
}

// ErrLeaveUnconfirmed: the leave message was not gossiped before
// Shutdown's deadline (a peer slow to answer, a starved process). The
// node has stopped all the same; its peers will see a failure instead of
// a leave, and act on it a few seconds later. Shutdown returns it only
// when the node did stop.
var ErrLeaveUnconfirmed = errors.New("cluster: leave not confirmed; peers will see a failure")

// Shutdown announces the departure and stops: peers see a leave, not a
// failure. The leave message gets until ctx's deadline (memberlist's
// default when ctx has none) to spread; past it Shutdown stops anyway and
// returns ErrLeaveUnconfirmed. Like Close it may be called again
// (memberlist itself panics on a Leave after its Shutdown).
func (c *Cluster) Shutdown(ctx context.Context) error {
	select {
	case <-c.done:
		return nil
	default:
	}
	if !c.started() {
		return c.Close()
	}
	timeout := 2 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = max(time.Until(dl), time.Nanosecond) // 0 would be no limit to memberlist
	}
	start := time.Now()
	c.announceLeaving(min(timeout/2, time.Second))
	leave := c.ml.Leave(max(timeout-time.Since(start), time.Nanosecond))
	if err := c.Close(); err != nil {
		return errors.Join(leave, err)
	}
	if leave != nil {
		return fmt.Errorf("%w: %v", ErrLeaveUnconfirmed, leave)
	}
	return nil
}

// Close stops gossiping at once (peers will see a failure). It is
// idempotent.
func (c *Cluster) Close() error {
	c.closeMu.Lock()
	defer c.closeMu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	close(c.done)
	c.wg.Wait()
	if c.ml == nil { // never started: the sockets are still ours to close
		if c.cfg.Stream != nil {
			return errors.Join(c.cfg.Stream.Close(), c.cfg.Packets.Close())
		}
		return nil
	}
	return c.ml.Shutdown()
}

// started reports whether Start created the memberlist.
func (c *Cluster) started() bool {
	c.closeMu.Lock()
	defer c.closeMu.Unlock()
	return c.ml != nil
}

func (c *Cluster) set(n *memberlist.Node) {
	meta, err := decodeMeta(n.Meta)
	if err != nil {
		c.log.Warn("cluster: bad metadata from a node", "node", n.Name, "err", err)
		return
	}
	c.mu.Lock()
	// Growth in agents per second between two figures at least half a
	// second apart, for load()'s estimate of the count now.
	if old, ok := c.members[n.Name]; ok && old.Meta.At > 0 && meta.At > old.Meta.At+500 {
		c.growth[n.Name] = float64(meta.Conns-old.Meta.Conns) / (float64(meta.At-old.Meta.At) / 1000)
	}
	c.members[n.Name] = Member{Name: n.Name, Addr: n.Address(), Meta: meta, Self: n.Name == c.cfg.Name}
	c.nodeAlive(n.Name) // back
	c.metaAt[n.Name] = time.Now()
	c.mu.Unlock()
}

type events struct{ c *Cluster }

// NotifyConflict: other claims existing's name from another address.
func (e events) NotifyConflict(existing, other *memberlist.Node) {
	e.c.conflictSeen(existing.Name, other.Address(), existing.Address(), time.Now())
}

func (e events) NotifyJoin(n *memberlist.Node) {
	e.c.mu.Lock()
	delete(e.c.leaving, n.Name) // an announcement of an earlier life
	e.c.mu.Unlock()
	e.c.set(n)
	if n.Name != e.c.cfg.Name {
		e.c.m.pingRTT.WithLabelValues(n.Name) // present (empty) until the first probe
	}
	e.c.log.Info("cluster: node joined", "node", n.Name, "addr", n.Address())
}

func (e events) NotifyUpdate(n *memberlist.Node) { e.c.set(n) }

func (e events) NotifyLeave(n *memberlist.Node) {
	e.c.mu.Lock()
	// n.State says alive whatever happened (memberlist#293): a leave in
	// good order is known by the node's announcement (announceLeaving).
	at, announced := e.c.leaving[n.Name]
	self := n.Name == e.c.cfg.Name // its own leave, seen as it goes
	left := self || n.State == memberlist.StateLeft || (announced && time.Since(at) < time.Minute)
	delete(e.c.leaving, n.Name)
	if m, ok := e.c.members[n.Name]; ok && !left {
		e.c.nodeFailed(m)
	} else if !self {
		e.c.nodeCleared(n.Name)
	}
	delete(e.c.members, n.Name)
	delete(e.c.redirects, n.Name)
	delete(e.c.metaAt, n.Name)
	delete(e.c.rtt, n.Name)
	delete(e.c.growth, n.Name)
	e.c.mu.Unlock()
	e.c.m.pingRTT.DeleteLabelValues(n.Name)
	if self {
		return
	}
	if left {
		e.c.log.Info("cluster: node left", "node", n.Name, "addr", n.Address())
		e.c.m.left.Inc()
		return
	}
	e.c.log.Warn("cluster: node failed", "node", n.Name, "addr", n.Address())
	e.c.m.failed.Inc()
}

// lateAnnouncement: a node's announcement that it leaves can arrive after
// its leave (memberlist reads the TCP stream that carries it and the
// gossip that carries the leave on different goroutines; under load the
// leave came first, and was taken for a failure). A failure judged less
// than this before the announcement is that leave.
const lateAnnouncement = 5 * time.Second

// announcedLeave records name's announcement that it leaves in good
// order (announceLeaving).
func (c *Cluster) announcedLeave(name string) {
	c.mu.Lock()
	f, failed := c.failed[name]
	late := failed && time.Since(f.Since) < lateAnnouncement
	if late {
		c.nodeCleared(name)
	} else {
		c.leaving[name] = time.Now()
	}
	c.mu.Unlock()
	if late {
		c.log.Info("cluster: node left (its announcement came after it was taken for a failure)", "node", name)
		c.m.left.Inc()
	}
}

// pings records memberlist's probe round trips per node.
type pings struct{ c *Cluster }

func (p pings) AckPayload() []byte { return nil }

func (p pings) NotifyPingComplete(n *memberlist.Node, rtt time.Duration, _ []byte) {
	p.c.mu.Lock()
	if old := p.c.rtt[n.Name]; old != 0 {
		rtt = old + (rtt-old)/8
	}
	p.c.rtt[n.Name] = rtt
	p.c.mu.Unlock()
	p.c.m.pingRTT.WithLabelValues(n.Name).Observe(rtt.Seconds())
}

type delegate struct{ c *Cluster }

func (d delegate) NodeMeta(limit int) []byte {
	m := d.c.cfg.Meta()
	d.c.mu.Lock()
	d.c.lastSent = m // compared without At: a new time alone is no change
	d.c.mu.Unlock()
	m.At = time.Now().UnixMilli()
	b := encodeMeta(m)
	if len(b) > limit {
		d.c.log.Error("cluster: metadata exceeds the limit; sending none", "bytes", len(b), "limit", limit)
		return nil
	}
	return b
}

// Gossiped messages start with their kind. Nodes of versions before the
// kind byte sent a State change as a bare JSON array and any other
// message as bare JSON (an object): NotifyMsg still takes both, so a
// rolling upgrade loses nothing from the old nodes. The old nodes take
// the new nodes' messages as unknown (logged) until they are upgraded
// too; a State change still reaches them within one push/pull
// (PushPullInterval, 15 s).
const (
	kindState   byte = 1 // a change of State, for its Merge
	kindMessage byte = 2 // for OnMessage
	kindLeaving byte = 3 // the sender's name: it leaves in good order
	kindForget  byte = 4 // a failed node's name: an operator removed it for good
)

// BroadcastState sends a change of the replicated state to every node
// through gossip (retransmitted a few times; push/pull repairs what
// gossip loses). A change must fit one UDP packet, about 1,300 bytes.
func (c *Cluster) BroadcastState(change []byte) { c.broadcast(kindState, change) }

// Broadcast sends msg to every other node's OnMessage, as BroadcastState
// does (at least once, best effort, one UDP packet at most).
func (c *Cluster) Broadcast(msg []byte) { c.broadcast(kindMessage, msg) }

func (c *Cluster) broadcast(kind byte, msg []byte) {
	c.queue.QueueBroadcast(broadcast(append([]byte{kind}, msg...)))
	c.m.broadcasts.Inc()
}

type broadcast []byte

// announceLeaving tells every other node that this one leaves in good
// order, and waits at most wait for them. memberlist does not tell the
// others' NotifyLeave a leave from a failure (the node it passes always
// says alive: hashicorp/memberlist#293), so the announcement goes first
// and the leave (a dead message about itself) follows. A node that does
// not answer within wait sees a failure, as before.
func (c *Cluster) announceLeaving(wait time.Duration) {
	c.sendToAll(append([]byte{kindLeaving}, c.cfg.Name...), wait)
}

// sendToAll sends msg to every other live node over TCP, to each at
// once, and waits at most wait for them. Gossip was not enough for a
// message every node must have: one gossiped its number of times need
// not have reached every node (one in six runs of a test of four nodes
// still logged a leave as a failure). The sends end within memberlist's
// TCP timeout whatever wait is.
func (c *Cluster) sendToAll(msg []byte, wait time.Duration) {
	var wg sync.WaitGroup
	for _, m := range c.Members() {
		// A Node of our own: those ml.Members returns are memberlist's,
		// which it changes under its lock (a race, caught by -race).
		host, port, err := net.SplitHostPort(m.Addr)
		p, _ := strconv.Atoi(port)
		if m.Self || err != nil {
			continue
		}
		n := &memberlist.Node{Name: m.Name, Addr: net.ParseIP(host), Port: uint16(p)}
		wg.Go(func() { c.ml.SendReliable(n, msg) })
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }() // ends with the sends
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	}
}

func (b broadcast) Invalidates(memberlist.Broadcast) bool { return false }
func (b broadcast) Message() []byte                       { return b }
func (b broadcast) Finished()                             {}

func (d delegate) NotifyMsg(b []byte) {
	if len(b) == 0 {
		return
	}
	switch b[0] {
	case kindState:
		d.c.mergeState(b[1:])
	case kindMessage:
		d.message(b[1:])
	case kindLeaving:
		d.c.announcedLeave(string(b[1:]))
	case kindForget:
		d.c.forgotten(string(b[1:]))
	case '[': // a State change from a node of an earlier version
		d.c.mergeState(b)
	default: // any other message from a node of an earlier version
		d.message(b)
	}
}

func (d delegate) message(b []byte) {
	if d.c.cfg.OnMessage != nil {
		d.c.cfg.OnMessage(append([]byte(nil), b...))
	}
}

func (d delegate) GetBroadcasts(overhead, limit int) [][]byte {
	return d.c.queue.GetBroadcasts(overhead, limit)
}

// LocalState and MergeRemoteState carry the failed nodes (failed.go)
// and Config.State in memberlist's push/pull.
func (d delegate) LocalState(join bool) []byte { return d.c.localState() }

func (d delegate) MergeRemoteState(buf []byte, join bool) { d.c.mergeRemoteState(buf) }

// mergeState hands a peer's state, or a change of it, to Config.State.
func (c *Cluster) mergeState(b []byte) {
	if c.cfg.State == nil || len(b) == 0 {
		return
	}
	if err := c.cfg.State.Merge(append([]byte(nil), b...)); err != nil {
		c.log.Warn("cluster: replicated state from a peer", "err", err)
	}
}

// memberlistLog sends memberlist's log lines to slog: [DEBUG] and [INFO]
// at debug level (what matters of joins and failures comes back through
// the events), [WARN] and [ERR] as warnings, each kind (its first four
// words) at most once in 10 s with the number it stands for. Those say
// when the network is wrong ("Was able to connect to node-1 over TCP but
// UDP probes failed, network may be misconfigured"): at debug level a
// cluster whose UDP could not pass (a node bound to [::1], its peers on
// 127.0.0.1) looked healthy, and a leave looked like a failure.
type memberlistLog struct {
	l     *slog.Logger
	mu    sync.Mutex
	every map[string]*ratelimit.Every // by kind; emptied past 64 kinds
}

func (w *memberlistLog) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	level, rest, _ := strings.Cut(line, " ")
	if level != "[WARN]" && level != "[ERR]" {
		w.l.Debug("memberlist", "line", line)
		return len(p), nil
	}
	words := strings.Fields(strings.TrimPrefix(rest, "memberlist: "))
	kind := strings.Join(words[:min(4, len(words))], " ")
	w.mu.Lock()
	e := w.every[kind]
	if e == nil {
		if len(w.every) >= 64 {
			clear(w.every)
		}
		e = ratelimit.NewEvery(10 * time.Second)
		w.every[kind] = e
	}
	w.mu.Unlock()
	e.Do(1, func(n int64) {
		w.l.Warn("cluster: memberlist warns (each kind logged once in 10 s)", "line", line, "lines_since_last", n)
	})
	return len(p), nil
}

// slogWriter sends the peer server's log lines (TLS handshake errors of
// connections that are not peers) to slog at debug level.
type slogWriter struct{ l *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	w.l.Debug("memberlist", "line", string(p[:max(0, len(p)-1)]))
	return len(p), nil
}

var _ io.Writer = slogWriter{}
var _ memberlist.Delegate = delegate{}
var _ memberlist.EventDelegate = events{}
