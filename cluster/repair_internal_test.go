package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dpgate/dpgate/internal/testutil"
	"github.com/dpgate/dpgate/push/queue"
	"github.com/dpgate/dpgate/push/wire"
	"github.com/dpgate/dpgate/tlsconf"
)

// memLocal is a push server's queue in memory, for routers in tests.
type memLocal struct {
	mu sync.Mutex
	q  map[string][]wire.Message
}

func (l *memLocal) Insert(items []queue.Item) ([]queue.Item, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var added []queue.Item
	for _, it := range items {
		if slices.ContainsFunc(l.q[it.Device], func(m wire.Message) bool { return m.ID == it.ID }) {
			continue
		}
		it.Seq = uint64(len(l.q[it.Device]) + 1)
		l.q[it.Device] = append(l.q[it.Device], it.Message)
		added = append(added, it)
	}
	return added, nil
}

func (l *memLocal) Remove(device string, ids [][16]byte, _ bool) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.q[device] = slices.DeleteFunc(l.q[device], func(m wire.Message) bool { return slices.Contains(ids, m.ID) })
	return nil
}

func (l *memLocal) Pending(device string) ([]wire.Message, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.q[device]), nil
}

func (l *memLocal) QueuedDevices() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var ds []string
	for d, q := range l.q {
		if len(q) > 0 {
			ds = append(ds, d)
		}
	}
	return ds
}

func (*memLocal) HeldDevices() map[string]time.Time { return nil }
func (*memLocal) Holds(string) bool                 { return false }
func (l *memLocal) RemoveDevice(device string) (bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, found := l.q[device]
	delete(l.q, device)
	return found, nil
}
func (*memLocal) Wake(string) bool { return false }

func (l *memLocal) queued(device string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.q[device])
}

// testIdentity is a gateway certificate of its own, as a node has.
func testIdentity(t *testing.T, name string) *tlsconf.Identity {
	t.Helper()
	cert, err := tlsconf.Issue(tlsconf.Template{CommonName: name}, nil)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), name+".pem")
	tlsconf.WriteKeyPair(cert, file, "")
	id, err := tlsconf.LoadIdentity(file, "")
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// routerNode is a cluster node with its router, serving peers on a TLS
// listener of its own as the push port does.
type routerNode struct {
	r     *Router
	local *memLocal
}

func startRouterNode(t *testing.T, name string, join []string, sweep time.Duration) (*routerNode, string) {
	t.Helper()
	// What the nodes logged comes with a failure: TestRepairAfterAFlap
	// failed once in CI, under load, and was not seen again.
	log := testutil.Logger(t, name)
	id := testIdentity(t, name)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{GetCertificate: id.GetCertificate,
		ClientAuth: tls.RequireAnyClientCert, NextProtos: []string{wire.PeerALPN}})
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(Config{Name: name, Bind: "127.0.0.1:0", Join: join, Logger: log,
		Meta: func() Meta { return Meta{Push: ln.Addr().String(), Pin: id.Pin()} }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	n := &routerNode{local: &memLocal{q: map[string][]wire.Message{}}}
	n.r, err = NewRouter(RouterConfig{Cluster: c, Local: n.local, Identity: id, Replicas: 1, SweepInterval: sweep, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	// As the push port does: the handshake, then the connection is the
	// router's.
	testutil.HandOver(t, ln, func(conn net.Conn) {
		if conn.(*tls.Conn).Handshake() != nil {
			conn.Close()
			return
		}
		n.r.ServeConn(conn)
	})
	n.r.Start()
	t.Cleanup(n.r.Close)
	addr := ""
	for _, m := range c.Members() {
		if m.Self {
			addr = m.Addr
		}
	}
	return n, addr
}

// repairWait bounds each wait of the repair tests. They run beside
// TestAgentsSpreadOverNodes (1,500 agents under -race, in this process)
// and, in CI, beside another package's tests: in a CI run at 0f2e0a9 the
// two nodes went without answering each other's gossip and peer requests
// twice for about 5 s (each declared the other dead twice; two copies
// timed out awaiting headers after 5 s), and the 20 s the tests had then
// ran out before the copy got through, with nothing wrong but the wait
// (queued on a, b: 1, 0; earlier 1, 1, a copy that arrived but whose
// answer timed out). What they check is that the copy gets through, not
// how soon.
const repairWait = 90 * time.Second

// pushDuringACut starts nodes a and b, cuts a off from b's peer port
// (gossip goes on) and pushes to a device b owns, on a: kept there. It
// returns the device, the cut (lift it with Store(false)) and a count of
// a's attempts to reach b during it.
func pushDuringACut(t *testing.T) (a, b *routerNode, dev string, cut *atomic.Bool, refused *atomic.Int64) {
	t.Helper()
	a, seed := startRouterNode(t, "node-a", nil, time.Hour)
	b, _ = startRouterNode(t, "node-b", []string{seed}, time.Hour)
	testutil.WaitFor(t, repairWait, func() error {
		// Both routers have rebalanced for both nodes: no view change
		// is left to hand anything over.
		if !strings.Contains(a.r.View(), "node-b") || !strings.Contains(b.r.View(), "node-a") {
			return fmt.Errorf("views %q and %q", a.r.View(), b.r.View())
		}
		for i := range 100 {
			d := fmt.Sprintf("pc-%d", i)
			if o := a.r.Owners(d); slices.Equal(o, []string{"node-b"}) && slices.Equal(b.r.Owners(d), o) {
				dev = d
				return nil
			}
		}
		return errors.New("the nodes do not agree on owners yet")
	})
	cut, refused = new(atomic.Bool), new(atomic.Int64)
	dial := a.r.peer.netDial
	a.r.peer.netDial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if cut.Load() {
			refused.Add(1)
			return nil, errors.New("cut off (test)")
		}
		return dial(ctx, network, addr)
	}
	cut.Store(true)
	a.r.peer.client.CloseIdleConnections()
	acc, err := a.r.Push(context.Background(), []string{dev}, []byte("during the cut"), time.Hour)
	if err != nil || len(acc) != 1 || acc[0].Copies != 1 {
		t.Fatalf("push during the cut: %+v, %v; want kept here (1 copy)", acc, err)
	}
	return a, b, dev, cut, refused
}

// TestRepairAfterShortCut: a push accepted on a node that is not its
// owner while the owner, alive to gossip, cannot be reached (a partition
// too short for anyone to be declared dead: no view changes) is kept
// there, and handed over once the owner can be reached again, by repair,
// long before the sweep, however many repairs the cut outlasts. Before, nothing offered it again until the
// sweep: delivered 25 s after such a partition healed
// (dpload chaos --faults split,isolate, docs/RELIABILITY.md).
func TestRepairAfterShortCut(t *testing.T) {
	t.Parallel() // it waits for repairs, 2 s apart
	a, b, dev, cut, refused := pushDuringACut(t)
	if a.local.queued(dev) != 1 || b.local.queued(dev) != 0 {
		t.Fatalf("queued on a, b: %d, %d; want 1, 0", a.local.queued(dev), b.local.queued(dev))
	}
	// The cut outlasts a repair: the one after it must try again.
	testutil.WaitFor(t, repairWait, func() error {
		if n := refused.Load(); n < 2 {
			return fmt.Errorf("%d attempts to reach b during the cut, want the push's and a repair's", n)
		}
		return nil
	})
	cut.Store(false)
	testutil.WaitFor(t, repairWait, func() error {
		if qa, qb := a.local.queued(dev), b.local.queued(dev); qa != 0 || qb != 1 {
			return fmt.Errorf("queued on a, b: %d, %d; want the push handed over to its owner b (0, 1) (%s)", qa, qb, a.r.repairState())
		}
		return nil
	})
}

// TestRepairAfterAFlap: the owner b is missing from this node's view for
// just the moment a repair runs (memberlist declared it dead and it came
// back between two of the router's view checks, as under heavy load), so
// that repair finds the push kept here rightly, with b gone. b must stay
// marked for the next repair, which hands the push over; before, the
// mark was spent and nothing offered the push again until the sweep.
func TestRepairAfterAFlap(t *testing.T) {
	t.Parallel() // it waits for repairs, 2 s apart
	a, b, dev, cut, _ := pushDuringACut(t)
	cut.Store(false)

	// The flap: b out of a's members for one repair, then back, too
	// quickly for a's view check (every 250 ms) to see it.
	c := a.r.c
	c.mu.Lock()
	gone := c.members["node-b"]
	delete(c.members, "node-b")
	c.mu.Unlock()
	a.r.repair()
	c.mu.Lock()
	c.members["node-b"] = gone
	c.mu.Unlock()

	testutil.WaitFor(t, repairWait, func() error {
		if qa, qb := a.local.queued(dev), b.local.queued(dev); qa != 0 || qb != 1 {
			return fmt.Errorf("queued on a, b: %d, %d; want the push handed over to its owner b (0, 1) (%s)", qa, qb, a.r.repairState())
		}
		return nil
	})
}

// repairState says what a's repair has left to do, for a failure's
// message: its view, the nodes marked stale, and the repairs that found
// them missing.
func (r *Router) repairState() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return fmt.Sprintf("view %q, stale %v, absent %v", r.view, r.stale, r.absent)
}

// TestOwnerDisplacedByANodeThatWentIsSentItsCopies: pushes accepted
// while a node that had just joined was an owner went to it, not to the
// owner it displaced; if the rebalance for that node set failed (the
// node had gone already) and the set went back to what it was, the
// displaced owner must be sent those pushes. Before, the router compared
// with the set of its last good rebalance, the same set: nothing was
// sent, and the queue stayed on one node (seen in the gateway's
// TestQueuedPushesSurviveOwnerFailure when its tests ran side by side).
func TestOwnerDisplacedByANodeThatWentIsSentItsCopies(t *testing.T) {
	r := &Router{cfg: RouterConfig{Replicas: 2}, self: "a"}
	a, b, c := Member{Name: "a"}, Member{Name: "b"}, Member{Name: "c"}
	two, three := []Member{a, b}, []Member{a, b, c}
	// A device that a and b own, and a and c once c is there (about one
	// in three).
	dev := ""
	for i := 0; dev == "" && i < 1000; i++ {
		d := fmt.Sprintf("pc-%d", i)
		if slices.Equal(sorted(r.owners(d, two)), []string{"a", "b"}) && slices.Equal(sorted(r.owners(d, three)), []string{"a", "c"}) {
			dev = d
		}
	}
	if dev == "" {
		t.Fatal("no device owned by a and c among a, b and c in 1,000")
	}
	var known views
	known = known.after(two, true)    // a and b have everything
	known = known.after(three, false) // the copy to c failed; pushes accepted meanwhile went to a and c
	known = known.after(three, false) // the check retrying
	if got := r.newOwners(dev, two, known); !slices.Equal(got, []string{"b"}) {
		t.Errorf("back to a and b after the rebalance for a, b, c failed: copies go to %v, want [b]", got)
	}
	if got := r.newOwners(dev, three, known); !slices.Equal(got, []string{"c"}) {
		t.Errorf("retrying for a, b, c: copies go to %v, want [c]", got)
	}
	// Once a rebalance has reached every owner, only a change sends copies.
	if got := r.newOwners(dev, two, known.after(two, true)); len(got) != 0 {
		t.Errorf("after a good rebalance for a and b: copies go to %v, want none", got)
	}
	// A node back under its name with another Boot is new in every set.
	b2 := Member{Name: "b", Meta: Meta{Boot: 2}}
	if got := r.newOwners(dev, []Member{a, b2}, views{two}.restarted([]Member{a, b2})); !slices.Equal(got, []string{"b"}) {
		t.Errorf("b restarted: copies go to %v, want [b]", got)
	}
	// Failures without end: after maxViews sets, everything to every owner.
	for i := range maxViews {
		known = known.after([]Member{a, b, {Name: fmt.Sprint("n", i)}}, false)
	}
	if known != nil {
		t.Errorf("after %d failed sets: %d kept, want none (everything sent again)", maxViews, len(known))
	}
}

func sorted(s []string) []string { return slices.Sorted(slices.Values(s)) }

// TestRemovedDeviceNotBroughtBackByALateCopy: a copy of a push of a
// removed device that arrives after the removal (an outbox, a rebalance
// that began before it) is not taken, whether this node held that push
// (dropped with the device) or only the node that asked for the removal
// did; a new push for the device is. Seen under load (TestDeviceRemovedOnEveryNode,
// 1 run in 30-40): after a removal answered from every node, one owner
// listed the device again with its 3 pushes.
func TestRemovedDeviceNotBroughtBackByALateCopy(t *testing.T) {
	a, seed := startRouterNode(t, "node-a", nil, time.Hour)
	b, _ := startRouterNode(t, "node-b", []string{seed}, time.Hour)
	testutil.WaitFor(t, repairWait, func() error {
		if !strings.Contains(a.r.View(), "node-b") || !strings.Contains(b.r.View(), "node-a") {
			return fmt.Errorf("views %q and %q", a.r.View(), b.r.View())
		}
		return nil
	})
	const dev = "pc-gone"
	item := func(id byte) queue.Item {
		return queue.Item{Device: dev, Message: wire.Message{ID: [16]byte{id}, Expiry: time.Now().Add(time.Hour).UnixMilli(), Payload: []byte{id}}}
	}
	a.local.Insert([]queue.Item{item(1), item(2), item(3)}) // a accepted three
	b.local.Insert([]queue.Item{item(1)})                   // b has a copy of one so far

	removed, err := a.r.RemoveElsewhere(context.Background(), dev)
	if err != nil || len(removed.Nodes) != 1 {
		t.Fatalf("RemoveElsewhere: %+v, %v; want removed on node-b", removed, err)
	}
	a.local.RemoveDevice(dev) // as the gateway does after RemoveElsewhere
	// The copies a was sending b arrive late, with a new push.
	var late []wireItem
	for _, id := range []byte{1, 2, 3, 4} {
		late = append(late, wireItem{Item: item(id), Origin: "node-a"})
	}
	if err := b.r.stored("node-a", late); err != nil {
		t.Fatal(err)
	}
	ms, _ := b.local.Pending(dev)
	if len(ms) != 1 || ms[0].ID != [16]byte{4} {
		t.Errorf("node-b after the removal and the late copies holds %v, want the new push (4) alone", ms)
	}
	// So does the node that asked.
	if err := a.r.stored("node-b", late[:1]); err != nil {
		t.Fatal(err)
	}
	if n := a.local.queued(dev); n != 0 {
		t.Errorf("node-a took back %d pushes of the device it removed", n)
	}
}
