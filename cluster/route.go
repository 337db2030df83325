package cluster

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dpgate/dpgate/internal/ratelimit"
	"github.com/dpgate/dpgate/push/queue"
	"github.com/dpgate/dpgate/push/wire"
	"github.com/dpgate/dpgate/tlsconf"
)

// Routing of pushes between nodes: the hash-owned directory of
// docs/CLUSTER.md. Each device has Replicas owner nodes, the first ones in
// the rendezvous order of its id over the nodes that serve push now. A
// push accepted anywhere is committed on the device's owners before the
// API answers (and on the accepting node too when the device is connected
// there). The node a device is connected to (its holder) registers it with
// the owners, which forward every push for it to the holder and, on
// registration, everything still queued. The holder passes the device's
// ACK back to the owners and the accepting node. When the nodes change,
// owners copy what they keep to the new owners, and a node that is no
// longer an owner hands its copies over and drops them.

// Local is this node's push server as the router uses it (*push.Server).
type Local interface {
	Insert(items []queue.Item) ([]queue.Item, error)
	Remove(device string, ids [][16]byte, acked bool) error
	Pending(device string) ([]wire.Message, error)
	QueuedDevices() []string
	HeldDevices() map[string]time.Time // device -> when its session began
	Holds(device string) bool
	// Wake sends the device a WAKE frame when it is connected here.
	Wake(device string) bool
	// RemoveDevice forgets the device and drops its queue; found is false
	// when this node knew nothing of it. A device connected here is
	// refused (push.ErrConnected).
	RemoveDevice(device string) (found bool, err error)
}

// Defaults of RouterConfig's zero fields.
const (
	DefaultReplicas       = 2
	DefaultSweepInterval  = 30 * time.Second
	DefaultRequestTimeout = 5 * time.Second
)

// RouterConfig configures a Router. Zero values mean the defaults in
// comments.
type RouterConfig struct {
	Cluster  *Cluster          // required
	Local    Local             // required
	Identity *tlsconf.Identity // this node's certificate, pinned by peers. Required.
	// Replicas is how many owner nodes keep each device's queue. Default: 2.
	Replicas int
	// SweepInterval: copies kept by a node that is neither an owner nor the
	// holder of the device are handed over this often, and every device
	// connected here is registered again with its owners (anti-entropy).
	// Default: 30s.
	SweepInterval time.Duration
	// RequestTimeout bounds one request to a peer. Default: 5s.
	RequestTimeout time.Duration
	// KeyExchange are the key exchange groups between nodes
	// (tlsconf.KeyExchange). Default: Go's, with the post-quantum hybrid.
	KeyExchange []tls.CurveID

	// Queries are what this node answers other nodes' AskAll with, by
	// name: each returns a value written as JSON. Default: none.
	Queries map[string]func() any

	// Registerer takes the router's metrics (docs/METRICS.md). Default:
	// a registry of its own, read by nobody.
	Registerer prometheus.Registerer
	Logger     *slog.Logger // default slog.Default()
}

// Router routes pushes between the nodes of a cluster.
type Router struct {
	cfg   RouterConfig
	c     *Cluster
	local Local
	log   *slog.Logger
	m     *routerMetrics
	self  string
	peer  *peerNet

	mu      sync.Mutex
	holders map[string]holder      // device -> node it is connected to, for devices owned here
	origins map[[16]byte]string    // push id -> node that accepted it, told when it is acknowledged
	gone    map[[16]byte]time.Time // pushes dropped here with their device, and when (see dropGone)
	out     map[string]*outbox     // by node name
	view    string                 // the node set last rebalanced for (View)
	// stale are nodes an outbox dropped work for (unreachable): what
	// they missed is sent again by repair until a send gets through.
	stale map[string]bool
	// absent counts, per stale node, the repairs in a row that found it
	// no push node (it is marked again for at most absentRepairs).
	absent map[string]int

	// notStoredLog keeps the warning for copies an owner did not take to
	// one in 10 s: at 2,000 pushes a second an owner going down would
	// otherwise log 2,000 lines a second.
	notStoredLog *ratelimit.Every

	done chan struct{}
	wg   sync.WaitGroup
}

// maxOrigins bounds the origins map; past it the map is emptied (a lost
// origin only means that node's ?wait= sees no ACK).
const maxOrigins = 1 << 20

// NewRouter builds the router of the local push server; Start starts it.
// Peers' connections arrive through ServeConn (the push server hands over
// those that negotiate wire.PeerALPN).
func NewRouter(cfg RouterConfig) (*Router, error) {
	if cfg.Cluster == nil || cfg.Local == nil || cfg.Identity == nil {
		return nil, errors.New("cluster: router needs Cluster, Local and Identity")
	}
	cfg.Replicas = cmp.Or(cfg.Replicas, DefaultReplicas)
	cfg.SweepInterval = cmp.Or(cfg.SweepInterval, DefaultSweepInterval)
	cfg.RequestTimeout = cmp.Or(cfg.RequestTimeout, DefaultRequestTimeout)
	cfg.Registerer = cmp.Or[prometheus.Registerer](cfg.Registerer, prometheus.NewRegistry())
	cfg.Logger = cmp.Or(cfg.Logger, slog.Default())
	r := &Router{
		cfg: cfg, c: cfg.Cluster, local: cfg.Local, log: cfg.Logger, m: newRouterMetrics(cfg.Registerer),
		self:    cfg.Cluster.cfg.Name,
		holders: map[string]holder{},
		origins: map[[16]byte]string{},
		gone:    map[[16]byte]time.Time{},
		out:     map[string]*outbox{},
		stale:   map[string]bool{},
		absent:  map[string]int{},
		done:    make(chan struct{}),

		notStoredLog: ratelimit.NewEvery(10 * time.Second),
	}
	r.peer = newPeerNet(r)
	return r, nil
}

// Start starts routing: rebalancing when the nodes change, the sweep and
// the repair of what unreachable nodes missed. Call it once, after the
// Cluster's Start.
func (r *Router) Start() {
	r.wg.Add(1)
	go r.loop() // exits on Close
}

// nodes are the members that keep queues now: serving push, with a pin
// to reach them by, and not draining.
func (r *Router) nodes() []Member {
	var out []Member
	for _, m := range r.c.Members() {
		if m.Meta.Push != "" && m.Meta.Pin != "" && !m.Meta.Draining {
			out = append(out, m)
		}
	}
	return out
}

// failedPushNodes are the push nodes declared dead and not back: they
// were not asked, and may know devices the live nodes do not.
func (r *Router) failedPushNodes() []string {
	var out []string
	for _, f := range r.c.Failed() {
		if f.Meta.Push != "" {
			out = append(out, f.Name)
		}
	}
	return out
}

// owners returns the device's owner nodes: the first Replicas of the
// rendezvous order (highest score of node name and device id first). A
// change of nodes moves only the devices whose owners came or went.
func (r *Router) owners(device string, nodes []Member) []string {
	type scored struct {
		name  string
		score uint64
	}
	top := make([]scored, 0, r.cfg.Replicas+1)
	for _, m := range nodes {
		s := scored{m.Name, rendezvous(m.Name, device)}
		i := sort.Search(len(top), func(i int) bool { return top[i].score < s.score })
		if i < r.cfg.Replicas {
			top = slices.Insert(top, i, s)
			if len(top) > r.cfg.Replicas {
				top = top[:r.cfg.Replicas]
			}
		}
	}
	out := make([]string, len(top))
	for i, s := range top {
		out[i] = s.name
	}
	return out
}

// Holder is the node the device is registered at, as an owner knows it ("" when unknown or not an owner here).
func (r *Router) Holder(device string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.holders[device].node
}

// holder is where a device is registered, and the start of that session
// (Unix nanoseconds on the holder's clock): a registration older than the
// one known is stale (it was delayed, or sent again after the device
// moved on) and is ignored, so a late message cannot point the owner at a
// node the device has left.
type holder struct {
	node  string
	since int64
}

// setHolder applies a registration (up) or its end; it reports whether
// the entry changed. A since of 0 (a peer of an earlier version) is taken
// as current.
func (r *Router) setHolder(device, node string, since int64, up bool) bool {
	cur, ok := r.holders[device]
	switch {
	case up && (!ok || since == 0 || since >= cur.since):
		r.holders[device] = holder{node, since}
		return true
	case !up && ok && cur.node == node && (since == 0 || since >= cur.since):
		delete(r.holders, device)
		return true
	}
	return false
}

// Wake has the node holding device send it a WAKE frame on its push
// connection and names that node. The holder is found through the
// device's owners (they know where it is registered). ErrNotHeld when
// every node asked answered that it does not hold it; when one did not
// answer, its error, naming it (the device may be connected there).
func (r *Router) Wake(ctx context.Context, device string) (string, error) {
	if r.local.Wake(device) {
		return r.self, nil
	}
	node, err := r.wakeElsewhere(ctx, device)
	if err == nil {
		r.m.wakeRouted.Inc()
	}
	return node, err
}

func (r *Router) wakeElsewhere(ctx context.Context, device string) (string, error) {
	if h := r.Holder(device); h != "" && h != r.self {
		node, err := r.peer.wake(ctx, h, device, false)
		if err != nil && !errors.Is(err, ErrNotHeld) {
			return h, fmt.Errorf("node %s: %w", h, err)
		}
		return node, err
	}
	var unanswered error
	for _, o := range r.Owners(device) {
		if o == r.self {
			continue
		}
		node, err := r.peer.wake(ctx, o, device, true)
		switch {
		case err == nil:
			return node, nil
		case !errors.Is(err, ErrNotHeld) && unanswered == nil:
			unanswered = fmt.Errorf("node %s: %w", o, err)
		}
	}
	if unanswered != nil {
		return "", unanswered
	}
	return "", ErrNotHeld
}

// wakeHere answers a peer's wake: a WAKE frame when the device is
// connected here, else (relay, asked as an owner) passed on to the holder.
func (r *Router) wakeHere(ctx context.Context, device string, relay bool, from string) (string, error) {
	if r.local.Wake(device) {
		return r.self, nil
	}
	if h := r.Holder(device); relay && h != "" && h != r.self && h != from {
		r.m.wakeRelayed.Inc()
		return r.peer.wake(ctx, h, device, false)
	}
	return "", ErrNotHeld
}

// Owners names the nodes that keep the device's queue now.
func (r *Router) Owners(device string) []string { return r.owners(device, r.nodes()) }

// rendezvous scores a node for a device: FNV-1a of both, finished with
// SplitMix64's mixer so that similar names still spread evenly.
func rendezvous(node, device string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(node); i++ {
		h = (h ^ uint64(node[i])) * 1099511628211
	}
	h = (h ^ 0xff) * 1099511628211
	for i := 0; i < len(device); i++ {
		h = (h ^ uint64(device[i])) * 1099511628211
	}
	h ^= h >> 30
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 27
	h *= 0x94d049bb133111eb
	return h ^ h>>31
}

// Accepted is one device's push as accepted by Push.
type Accepted struct {
	Device string
	ID     [16]byte
	Expiry int64  // unix milliseconds
	Seq    uint64 // the sequence of this node's copy; 0 when it keeps none
	Copies int    // nodes that committed it
}

// Push commits one payload for each device on the device's owners (and
// here when the device is connected here) and returns once they have it.
// A node that cannot be reached is replaced by a copy on this node, which
// the sweep hands over later, so a push is refused only when this node's
// own store fails.
func (r *Router) Push(ctx context.Context, devices []string, payload []byte, ttl time.Duration) ([]Accepted, error) {
	expiry := time.Now().Add(ttl).UnixMilli()
	items := make([]queue.Item, len(devices))
	for i, d := range devices {
		items[i].Device = d
		rand.Read(items[i].ID[:])
		items[i].Expiry = expiry
		items[i].Payload = payload
	}
	nodes := r.nodes()
	var local []queue.Item
	remote := map[string][]queue.Item{}
	copies := make(map[[16]byte]int, len(items))
	for _, it := range items {
		owners := r.owners(it.Device, nodes)
		here := len(owners) == 0 || r.local.Holds(it.Device)
		for _, o := range owners {
			if o == r.self {
				here = true
			} else {
				remote[o] = append(remote[o], it)
			}
		}
		if here {
			local = append(local, it)
		}
	}
	type result struct {
		node  string
		items []queue.Item
		err   error
	}
	results := make(chan result, len(remote))
	for node, its := range remote {
		go func() { // ends with the request
			results <- result{node, its, r.peer.store(ctx, node, its)}
		}()
	}
	// A copy is counted once its commit here returned: the store skips
	// an id the device acknowledged meanwhile (an owner's copy, forwarded
	// to the holder, can be delivered and acknowledged before this
	// node's own commit ends; counting only what the store added made
	// such a push look under-copied: TestPushRoutedAcrossNodes under load).
	seqs := map[[16]byte]uint64{}
	keptHere := map[[16]byte]bool{}
	if len(local) > 0 {
		added, err := r.local.Insert(local)
		if err != nil {
			for range remote {
				<-results
			}
			return nil, err
		}
		for _, it := range local {
			keptHere[it.ID] = true
		}
		for _, it := range added {
			seqs[it.ID] = it.Seq
		}
		// An owner knows the holder: send it on now, in parallel with
		// the other owner's copy (the holder drops the second by id).
		r.forward(r.self, added)
	}
	var fallback []queue.Item
	for range remote {
		res := <-results
		if res.err != nil {
			r.notStoredLog.Do(int64(len(res.items)), func(n int64) {
				r.log.Warn("cluster: push not stored on its owner; kept here (logged once in 10 s; dpgate_cluster_route_failed_total counts each)",
					"node", res.node, "pushes_since_last_line", n, "err", res.err)
			})
			r.m.routeFailed.WithLabelValues(res.node).Add(float64(len(res.items)))
			// The owner missed it: repair offers it again until it
			// gets through. A node cut off but never declared dead
			// (a short partition) changes no view, and the sweep is
			// up to SweepInterval away.
			r.markStale(res.node)
			fallback = append(fallback, res.items...)
			continue
		}
		r.m.storedRemote.Add(float64(len(res.items)))
		for _, it := range res.items {
			copies[it.ID]++
		}
	}
	if len(fallback) > 0 {
		added, err := r.local.Insert(fallback)
		if err != nil {
			return nil, err
		}
		for _, it := range fallback {
			keptHere[it.ID] = true
		}
		for _, it := range added {
			seqs[it.ID] = it.Seq
		}
	}
	for id := range keptHere {
		copies[id]++
	}
	out := make([]Accepted, len(items))
	for i, it := range items {
		out[i] = Accepted{Device: it.Device, ID: it.ID, Expiry: it.Expiry, Seq: seqs[it.ID], Copies: copies[it.ID]}
	}
	return out, nil
}

// stored handles copies another node sends: remember who accepted them,
// commit them, and pass them on to the device's holder when that is a
// third node. Who accepted them is recorded before the commit: the commit
// wakes the device's session, and a quick agent's ACK can reach Acked
// before Insert returns; recorded after, that ACK was not told to the
// accepting node (its ?wait= ran out with "queued") and the record stayed.
func (r *Router) stored(from string, items []wireItem) error {
	its := make([]queue.Item, 0, len(items))
	r.mu.Lock()
	if len(r.origins) > maxOrigins {
		clear(r.origins)
	}
	for _, w := range items {
		if at, gone := r.gone[w.ID]; gone && time.Since(at) <= goneKept {
			continue // its device was removed here since
		}
		its = append(its, w.Item)
		if w.Origin != "" && w.Origin != r.self {
			r.origins[w.ID] = w.Origin
		}
	}
	r.mu.Unlock()
	added, err := r.local.Insert(its)
	if err != nil {
		return err
	}
	r.forward(from, added)
	return nil
}

// forward passes pushes just committed here on to their devices' holders
// when those are other nodes than this one and from (which has them).
func (r *Router) forward(from string, added []queue.Item) {
	fwd := map[string][]wireItem{}
	r.mu.Lock()
	for _, it := range added {
		if h := r.holders[it.Device].node; h != "" && h != r.self && h != from {
			origin := r.origins[it.ID]
			if origin == "" {
				origin = r.self // accepted here
			}
			fwd[h] = append(fwd[h], wireItem{Item: it, Origin: origin})
		}
	}
	r.mu.Unlock()
	for h, ws := range fwd {
		r.outbox(h).addItems(ws)
		r.m.forwarded.Add(float64(len(ws)))
	}
}

// op is a small message between nodes, applied in the order sent.
type op struct {
	Kind   string  `json:"k"` // "reg", "unreg" or "ack"
	Device string  `json:"d"`
	IDs    []hexID `json:"i,omitempty"`
	Since  int64   `json:"v,omitempty"` // reg and unreg: the session's start, Unix ns
}

// applyOps handles another node's registrations and ACKs.
func (r *Router) applyOps(from string, ops []op) {
	for _, o := range ops {
		switch o.Kind {
		case "reg":
			r.mu.Lock()
			current := r.setHolder(o.Device, from, o.Since, true)
			r.mu.Unlock()
			if current {
				r.sendPending(o.Device, from)
			} else {
				r.m.staleRegs.Inc()
			}
		case "unreg":
			r.mu.Lock()
			r.setHolder(o.Device, from, o.Since, false)
			r.mu.Unlock()
		case "ack":
			ids := make([][16]byte, len(o.IDs))
			r.mu.Lock()
			for i, id := range o.IDs {
				ids[i] = id
				delete(r.origins, id)
			}
			r.mu.Unlock()
			if err := r.local.Remove(o.Device, ids, true); err != nil {
				r.log.Error("cluster: removing acknowledged pushes", "device", o.Device, "err", err)
			}
		}
	}
}

// sendPending forwards what is queued here for a device to its holder.
func (r *Router) sendPending(device, holder string) {
	msgs, err := r.local.Pending(device)
	if err != nil || len(msgs) == 0 {
		return
	}
	ws := make([]wireItem, len(msgs))
	r.mu.Lock()
	for i, m := range msgs {
		ws[i] = wireItem{Item: queue.Item{Device: device, Message: m}, Origin: r.origins[m.ID]}
	}
	r.mu.Unlock()
	r.outbox(holder).addItems(ws)
	r.m.forwarded.Add(float64(len(ws)))
}

// Nodes lists the push servers for WELCOME, this node first (part of
// push.Cluster, which the router implements for this node's push server).
func (r *Router) Nodes() []string { return r.c.PushNodes() }

// Redirect names the node a new agent should go to instead, when this one
// is above its fair share (Cluster.RedirectTarget).
func (r *Router) Redirect(sessions int, redirected bool) (string, bool) {
	return r.c.RedirectTarget(sessions, redirected)
}

// SessionChanged: the device's owners learn where it is connected.
func (r *Router) SessionChanged(device string, up bool, since time.Time) {
	kind := "unreg"
	if up {
		kind = "reg"
	}
	owners := r.owners(device, r.nodes())
	r.mu.Lock()
	if slices.Contains(owners, r.self) {
		r.setHolder(device, r.self, since.UnixNano(), up)
	}
	r.mu.Unlock()
	for _, o := range owners {
		if o != r.self {
			r.outbox(o).addOp(op{Kind: kind, Device: device, Since: since.UnixNano()})
		}
	}
}

// Acked: the owners drop their copies and
// the accepting node learns the push was delivered.
func (r *Router) Acked(device string, id [16]byte) {
	targets := r.owners(device, r.nodes())
	r.mu.Lock()
	if o := r.origins[id]; o != "" && !slices.Contains(targets, o) {
		targets = append(targets, o)
	}
	delete(r.origins, id)
	r.mu.Unlock()
	for _, t := range targets {
		if t != r.self {
			r.outbox(t).addOp(op{Kind: "ack", Device: device, IDs: []hexID{id}})
		}
	}
}

func (r *Router) outbox(node string) *outbox {
	r.mu.Lock()
	defer r.mu.Unlock()
	ob := r.out[node]
	if ob == nil {
		ob = newOutbox(r, node)
		r.out[node] = ob
	}
	return ob
}

// loop rebalances when the node set changes and sweeps periodically.
func (r *Router) loop() {
	defer r.wg.Done()
	check := time.NewTicker(250 * time.Millisecond)
	defer check.Stop()
	sweep := time.NewTicker(r.cfg.SweepInterval)
	defer sweep.Stop()
	repair := time.NewTicker(repairInterval)
	defer repair.Stop()
	var since views // what the owners are known to have; nil before the first rebalance
	for {
		select {
		case <-r.done:
			return
		case <-check.C:
			nodes := r.nodes()
			names := make([]string, len(nodes))
			for i, m := range nodes {
				names[i] = m.Name + "@" + strconv.FormatInt(m.Meta.Boot, 36)
			}
			view := strings.Join(names, ",")
			if view != r.View() {
				for _, m := range nodes {
					if m.Name != r.self {
						r.m.declare(m.Name)
					}
				}
				r.setView(view)
				r.log.Info("cluster: push nodes changed; rebalancing", "nodes", view)
				since = since.restarted(nodes)
				r.reregister(nodes, since)
				ok := r.rebalanceFor(nodes, since, true)
				since = since.after(nodes, ok)
				if !ok {
					r.setView("") // a copy failed: again at the next check
				}
			}
		case <-sweep.C:
			r.registerAll()
			r.rebalanceFor(r.nodes(), nil, false)
		case <-repair.C:
			r.repair()
		}
	}
}

// View is the set of push nodes the router last rebalanced for, as
// name@boot joined by commas; "" before the first.
func (r *Router) View() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.view
}

func (r *Router) setView(v string) {
	r.mu.Lock()
	r.view = v
	r.mu.Unlock()
}

// repairInterval is how often work dropped for an unreachable node is
// offered again.
const repairInterval = 2 * time.Second

// markStale records that node missed work (an outbox gave up on it).
func (r *Router) markStale(node string) {
	r.mu.Lock()
	r.stale[node] = true
	r.mu.Unlock()
}

// repair sends again what nodes marked stale missed, the case a partition
// leaves behind: the node may still hold its agents (it did not go away,
// it was cut off), so nobody re-registers and nothing else would resend.
// As an owner, everything queued here for the devices it holds; as a
// holder, the registrations of the devices it owns; and the copies this
// node kept for owners it could not reach. Sending again is safe: copies
// are deduplicated by id at the holder and the agent. A node still
// unreachable is marked stale again by the outbox and retried next time.
func (r *Router) repair() {
	r.mu.Lock()
	stale := r.stale
	r.stale = map[string]bool{}
	var resend [][2]string // device, holder
	for d, h := range r.holders {
		if stale[h.node] {
			resend = append(resend, [2]string{d, h.node})
		}
	}
	r.mu.Unlock()
	if len(stale) == 0 {
		return
	}
	for _, dh := range resend {
		r.sendPending(dh[0], dh[1])
	}
	r.registerAll()
	r.m.repaired.Add(float64(len(resend)))
	nodes := r.nodes()
	r.mu.Lock()
	for node := range stale {
		// Not a push node this moment (memberlist declared it dead and it
		// may be back before the view check sees either): what was kept
		// here for it is kept rightly now, and must be offered again once
		// it is back, which only a repair does if the view never changed.
		// A node away longer comes back as a view change, which hands
		// over by itself.
		if slices.ContainsFunc(nodes, func(m Member) bool { return m.Name == node }) {
			delete(r.absent, node)
		} else if r.absent[node]++; r.absent[node] <= absentRepairs {
			r.stale[node] = true
		} else {
			delete(r.absent, node)
		}
	}
	r.mu.Unlock()
	r.rebalanceFor(nodes, nil, false)
}

// absentRepairs bounds the repairs a stale node missing from the view is
// kept for: 15 (30 s) is far longer than a flap the view check can miss
// (250 ms).
const absentRepairs = 15

// views are the node sets a router rebalanced for since its last
// rebalance that reached every owner, that one first: what each device's
// owners are known to have. An owner in all of them has had every push
// queued here for the device: copied by that rebalance, or sent by the
// outboxes as each push was accepted (when an outbox gives up, repair
// sends again). One that is not may lack pushes accepted while a later
// set, in which it was no owner, was current: a node that joined and
// went before a rebalance reached it leaves the set as it was, and the
// owner it had displaced must be sent what came in meanwhile.
//
// nil is nothing known: every owner is sent everything.
type views [][]Member

// maxViews bounds the sets kept after failed rebalances; past it the
// next rebalance sends everything to every owner.
const maxViews = 8

// after is the views once a rebalance for nodes has reached every owner
// (ok) or not.
func (v views) after(nodes []Member, ok bool) views {
	switch {
	case ok:
		return views{nodes}
	case v == nil || len(v) >= maxViews:
		return nil
	case sameNodes(v[len(v)-1], nodes): // the same set again: the check retrying
		return v
	}
	return append(slices.Clone(v), nodes)
}

// restarted drops from each set a node that is in nodes under its name
// with another Boot: back too soon to be missed (a restart, an upgrade),
// it is new all the same, having lost the registrations it had and the
// copies meant for it.
func (v views) restarted(nodes []Member) views {
	if v == nil {
		return nil
	}
	out := make(views, len(v))
	for i, set := range v {
		out[i] = slices.DeleteFunc(slices.Clone(set), func(p Member) bool {
			return slices.ContainsFunc(nodes, func(m Member) bool { return m.Name == p.Name && m.Meta.Boot != p.Meta.Boot })
		})
	}
	return out
}

func sameNodes(a, b []Member) bool {
	return slices.EqualFunc(a, b, func(x, y Member) bool { return x.Name == y.Name && x.Meta.Boot == y.Meta.Boot })
}

// newOwners are the device's owners among nodes that are not known to
// have what this node keeps for it (all of them when known is nil): not
// owners in every set of known. With rendezvous hashing a change of one
// node among N changes the owners of about 2 devices in N.
func (r *Router) newOwners(device string, nodes []Member, known views) []string {
	owners := r.owners(device, nodes)
	if known == nil {
		return owners
	}
	steady := r.owners(device, known[0]) // owners in every set of known
	for _, set := range known[1:] {
		in := r.owners(device, set)
		steady = slices.DeleteFunc(steady, func(o string) bool { return !slices.Contains(in, o) })
	}
	return slices.DeleteFunc(owners, func(o string) bool { return slices.Contains(steady, o) })
}

// reregister tells the new owners of every device connected here where it
// is (all its owners when known is nil).
func (r *Router) reregister(nodes []Member, known views) {
	for d, since := range r.local.HeldDevices() {
		for _, o := range r.newOwners(d, nodes, known) {
			if o == r.self {
				r.mu.Lock()
				r.setHolder(d, r.self, since.UnixNano(), true)
				r.mu.Unlock()
			} else {
				r.outbox(o).addOp(op{Kind: "reg", Device: d, Since: since.UnixNano()})
			}
		}
	}
}

// registerAll tells every owner of every device connected here where it
// is, again: the anti-entropy that repairs an owner's entry that a lost
// or late message left wrong. Each registration also makes the owner send
// what it still has queued for the device.
func (r *Router) registerAll() { r.reregister(r.nodes(), nil) }

func (r *Router) rebalanceFor(nodes []Member, known views, afterChange bool) bool {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return r.rebalance(ctx, nodes, known, afterChange)
}

// rebalance makes sure every device's owners have what this node keeps
// for it, and drops copies this node keeps for no reason (it is neither
// an owner nor the holder) once the owners have them. After a change of
// nodes it copies to the owners not known to have them (newOwners); the
// periodic sweep only hands over the copies this node should not keep.
// It reports whether every copy reached its owner.
func (r *Router) rebalance(ctx context.Context, nodes []Member, known views, afterChange bool) bool {
	send := map[string][]wireItem{}
	drop := map[string][][16]byte{} // device -> ids to drop once sent
	need := map[string][]string{}   // device -> owners it must reach
	for _, d := range r.local.QueuedDevices() {
		owners := r.owners(d, nodes)
		keep := slices.Contains(owners, r.self) || r.local.Holds(d)
		targets := owners // a copy that goes: every owner must have it
		if keep {
			if !afterChange {
				continue
			}
			targets = r.newOwners(d, nodes, known)
		}
		if len(targets) == 0 {
			continue
		}
		msgs, err := r.local.Pending(d)
		if err != nil || len(msgs) == 0 {
			continue
		}
		r.mu.Lock()
		for _, o := range targets {
			if o == r.self {
				continue
			}
			for _, m := range msgs {
				send[o] = append(send[o], wireItem{Item: queue.Item{Device: d, Message: m}, Origin: r.origins[m.ID]})
			}
			need[d] = append(need[d], o)
		}
		r.mu.Unlock()
		if !keep && len(owners) > 0 {
			for _, m := range msgs {
				drop[d] = append(drop[d], m.ID)
			}
		}
	}
	failed := map[string]bool{}
	for node, ws := range send {
		for chunk := range slices.Chunk(ws, 1000) {
			if err := r.peer.storeWire(ctx, node, chunk); err != nil {
				r.log.Warn("cluster: copying queued pushes to their owner", "node", node, "err", err)
				failed[node] = true
				r.markStale(node) // repair tries again
				break
			}
			r.m.rebalanced.Add(float64(len(chunk)))
		}
	}
	for d, ids := range drop {
		if slices.ContainsFunc(need[d], func(o string) bool { return failed[o] }) {
			continue // keep ours until every owner has them
		}
		if err := r.local.Remove(d, ids, false); err != nil {
			r.log.Error("cluster: dropping handed-over pushes", "device", d, "err", err)
			continue
		}
		r.m.handedOver.Add(float64(len(ids)))
	}
	return len(failed) == 0
}

// Handoff gives every push queued here to the other nodes and drops it
// here: a node that leaves for good calls it once its agents are gone.
// Without another node (the last one leaving) they stay in the store, as
// they would without a cluster, and are delivered when the node is back.
func (r *Router) Handoff(ctx context.Context) error {
	if len(r.local.QueuedDevices()) == 0 {
		return nil
	}
	var nodes []Member
	for _, m := range r.nodes() {
		if m.Name != r.self {
			nodes = append(nodes, m)
		}
	}
	if len(nodes) == 0 {
		r.log.Warn("cluster: no other node to hand queued pushes to; they stay in this node's store")
		return nil
	}
	r.rebalance(ctx, nodes, nil, false)
	if left := len(r.local.QueuedDevices()); left > 0 {
		return fmt.Errorf("cluster: the pushes of %d devices could not be handed over; they stay in this node's store", left)
	}
	return nil
}

// Close stops the router and its connections to peers.
func (r *Router) Close() {
	select {
	case <-r.done:
		return
	default:
		close(r.done)
	}
	r.wg.Wait()
	r.mu.Lock()
	obs := r.out
	r.out = map[string]*outbox{}
	r.mu.Unlock()
	for _, ob := range obs {
		ob.close()
	}
	r.peer.close()
}
