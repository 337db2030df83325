package cluster_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dpgate/dpgate/cluster"
	"github.com/dpgate/dpgate/internal/store"
	"github.com/dpgate/dpgate/internal/testutil"
	"github.com/dpgate/dpgate/push"
	"github.com/dpgate/dpgate/push/client"
	"github.com/dpgate/dpgate/push/queue"
	"github.com/dpgate/dpgate/push/wire"
	"github.com/dpgate/dpgate/tlsconf"
)

var quiet = testutil.Quiet()

// tight makes failure detection fast for tests.
func tight(mc *memberlist.Config) {
	mc.ProbeInterval = 50 * time.Millisecond
	mc.ProbeTimeout = 25 * time.Millisecond
	mc.GossipInterval = 20 * time.Millisecond
	mc.SuspicionMult = 2
	mc.PushPullInterval = time.Second
	mc.TCPTimeout = time.Second
	mc.GossipToTheDeadTime = time.Second
	mc.DeadNodeReclaimTime = time.Second
}

// steady keeps tight's quick gossip but memberlist's LAN failure
// detection, for tests that read a settled view rather than watch a
// failure: with tight's 25 ms probe timeout a node starved of CPU (-race,
// other packages' tests on the same two cores) was declared dead between
// two DNS queries, and an answer lacked it.
func steady(mc *memberlist.Config) {
	tight(mc)
	lan := memberlist.DefaultLANConfig()
	mc.ProbeInterval, mc.ProbeTimeout, mc.SuspicionMult = lan.ProbeInterval, lan.ProbeTimeout, lan.SuspicionMult
}

// testNode is one cluster member whose metadata the test controls.
type testNode struct {
	*cluster.Cluster
	name  string
	addr  string
	conns atomic.Int64
	push  string
}

// newTestCluster starts n nodes on 127.0.0.1, 127.0.0.2, ... with tight timings; every
// node after the first joins the first.
func newTestCluster(t *testing.T, n int, meta func(i int, nd *testNode) cluster.Meta) []*testNode {
	t.Helper()
	return newTestClusterWith(t, n, meta, nil)
}

// newTestClusterWith is newTestCluster with a change to each node's
// configuration.
func newTestClusterWith(t testing.TB, n int, meta func(i int, nd *testNode) cluster.Meta, tweak func(i int, cfg *cluster.Config)) []*testNode {
	t.Helper()
	var nodes []*testNode
	for i := range n {
		nd := &testNode{name: fmt.Sprintf("node-%d", i), push: fmt.Sprintf("127.0.0.%d:%d", i+1, 13295)}
		var join []string
		if i > 0 {
			join = []string{nodes[0].addr}
		}
		cfg := cluster.Config{
			Name: nd.name, Bind: fmt.Sprintf("127.0.0.%d:0", i+1), Join: join, // each node its own address
			RefreshInterval: 20 * time.Millisecond, RejoinInterval: 200 * time.Millisecond,
			Meta: func() cluster.Meta {
				if meta != nil {
					return meta(i, nd)
				}
				return cluster.Meta{Push: nd.push, Conns: int(nd.conns.Load()), Capacity: 1000}
			},
			Tune: tight, Logger: quiet,
		}
		if tweak != nil {
			tweak(i, &cfg)
		}
		c := startNode(t, cfg)
		nd.Cluster = c
		self := c.Members()
		for _, m := range self {
			if m.Self {
				nd.addr = m.Addr
			}
		}
		nodes = append(nodes, nd)
	}
	return nodes
}

// startNode builds and starts a node; the test's cleanup closes it.
func startNode(t testing.TB, cfg cluster.Config) *cluster.Cluster {
	t.Helper()
	if cfg.SecretKeys == nil {
		// A gossip key of the test's own: the package's tests run side by
		// side, each naming its nodes node-0, node-1, ... on 127.0.0.N, and
		// a port one test's node closed may be bound by another test's
		// node of the same name, which the first test's nodes would then
		// take for theirs (gossip to the dead, rejoins) and see come back.
		key := sha256.Sum256([]byte(strings.Split(t.Name(), "/")[0]))
		cfg.SecretKeys = [][]byte{key[:]}
	}
	c, err := cluster.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	return c
}

func sees(nd *testNode, want int) error {
	if got := len(nd.Members()); got != want {
		return fmt.Errorf("%s sees %d members, want %d", nd.name, got, want)
	}
	return nil
}

func TestJoinLeaveFailure(t *testing.T) {
	t.Parallel() // mostly waits for second-long probes
	// Probes of a second (a timeout of half that): with -race and other
	// packages' tests on the 2 cores, 200 ms timed out so often that no
	// direct probe to one node succeeded in 30 s, so it had no RTT. They
	// are set after tight, which set them back to 50 ms (with
	// cfg.ProbeInterval alone): under load, nodes were declared dead and
	// came back, and one was listed failed just after node-3's leave.
	var leaverLog testutil.Buffer // node-3's, which leaves in good order below
	nodes := newTestClusterWith(t, 4, nil, func(i int, cfg *cluster.Config) {
		cfg.Tune = func(mc *memberlist.Config) {
			tight(mc)
			mc.ProbeInterval, mc.ProbeTimeout = time.Second, 500*time.Millisecond
		}
		if i == 3 {
			cfg.Logger = leaverLog.Logger(slog.LevelInfo)
		}
	})
	waitFor(t, 10*time.Second, func() error {
		for _, nd := range nodes {
			if err := sees(nd, 4); err != nil {
				return err
			}
		}
		return nil
	})
	// memberlist's probes measure the round trip to every peer, one peer
	// a probe interval. With -race and the CI run's other packages (a go
	// build among them) on the 2 cores, probes time out often enough that
	// one peer had no RTT after 30 s (twice); alone under a CPU load it
	// took 5-21 s.
	waitFor(t, 90*time.Second, func() error {
		for _, m := range nodes[0].Members() {
			if !m.Self && m.RTT <= 0 {
				return fmt.Errorf("no ping RTT for %s yet", m.Name)
			}
		}
		return nil
	})
	// Time for the leave to go out: with 1 s it was not confirmed once in
	// CI (under load of my own beside it; once before at 4d4df1a), and
	// what is tested here is how the others take it, not how soon.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := nodes[3].Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, func() error { return sees(nodes[0], 3) })
	// Not listed failed, once its announcement is in: that can come after
	// the leave (announcedLeave); the others' record of the leave would
	// also correct a node that missed it (failed.go).
	waitFor(t, 10*time.Second, func() error {
		if f := nodes[0].Failed(); len(f) != 0 {
			return fmt.Errorf("after a leave in good order, Failed() = %v, want none", f)
		}
		return nil
	})
	// memberlist tells a node of its own leave too. (Under load, with
	// these tight probes, it may see others fail and come back: those
	// lines are right.)
	if strings.Contains(leaverLog.String(), `msg="cluster: node failed" node=node-3 `) {
		t.Errorf("the node that left logged its own failure:\n%s", leaverLog.String())
	}
	nodes[2].Close() // a failure: no leave message
	// Who is listed, not how many: in a run beside cmd/dpgate's tests
	// node-0 declared a starved node-1 failed while node-2 was still
	// listed; the count was the 2 awaited and Failed() named node-1. A
	// starved node refutes and is back; node-2 stays failed.
	var f []cluster.Failed
	waitFor(t, 60*time.Second, func() error {
		for _, nd := range nodes[:2] {
			var names []string
			for _, m := range nd.Members() {
				names = append(names, m.Name)
			}
			if slices.Sort(names); !slices.Equal(names, []string{"node-0", "node-1"}) {
				return fmt.Errorf("%s sees %v, want node-0 and node-1", nd.name, names)
			}
		}
		if f = nodes[0].Failed(); len(f) != 1 || f[0].Name != "node-2" {
			return fmt.Errorf("node-0 lists %+v as failed, want node-2", f)
		}
		return nil
	})
	// The failed node stays listed (it may hold devices and pushes the
	// others do not know of), with what it last gossiped, until it is back.
	if f[0].Meta.Push != nodes[2].push || f[0].Since.IsZero() {
		t.Fatalf("after node-2 failed, Failed() = %+v, want node-2 with its push address and a time", f)
	}
	startNode(t, cluster.Config{Name: "node-2", Bind: "127.0.0.3:0", Join: []string{nodes[0].addr},
		RefreshInterval: 20 * time.Millisecond, RejoinInterval: 200 * time.Millisecond,
		Meta: func() cluster.Meta { return cluster.Meta{Push: nodes[2].push} }, Tune: tight, Logger: quiet})
	waitFor(t, 30*time.Second, func() error {
		if f := nodes[0].Failed(); len(f) != 0 {
			return fmt.Errorf("node-2 back, Failed() still = %v", f)
		}
		return sees(nodes[0], 3)
	})
}

// TestShutdownPastItsDeadline: a Shutdown whose deadline has passed
// stops the node at once and says that its leave was not confirmed.
// Before, the expired deadline became memberlist's timeout 0, which is
// no limit: Shutdown waited for the leave to be gossiped however long
// that took, and returned nil.
func TestShutdownPastItsDeadline(t *testing.T) {
	nodes := newTestCluster(t, 2, nil)
	waitFor(t, 10*time.Second, func() error { return sees(nodes[0], 2) })
	ctx, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	if err := nodes[1].Shutdown(ctx); !errors.Is(err, cluster.ErrLeaveUnconfirmed) {
		t.Fatalf("Shutdown past its deadline: %v, want ErrLeaveUnconfirmed", err)
	}
	waitFor(t, 30*time.Second, func() error { return sees(nodes[0], 1) })
}

// cutTransport is the node's gossip transport with a switch that
// drops everything between one node and the others, both ways (every node
// uses one, so filtering what each sends is enough).
type cutTransport struct {
	memberlist.Transport
	self     string
	isolated *atomic.Value // gossip address of the node cut off, when cut
}

func (t *cutTransport) blocked(to string) bool {
	iso, _ := t.isolated.Load().(string)
	return iso != "" && (t.self == iso) != (to == iso)
}

func (t *cutTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	if t.blocked(addr) {
		return time.Now(), nil // lost on the way
	}
	return t.Transport.WriteTo(b, addr)
}

func (t *cutTransport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	return t.WriteTo(b, a.Addr)
}

func (t *cutTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	if t.blocked(addr) {
		return nil, fmt.Errorf("partitioned from %s", addr)
	}
	return t.Transport.DialTimeout(addr, timeout)
}

func (t *cutTransport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	return t.DialTimeout(a.Addr, timeout)
}

// TestPartitionHeals cuts one node off for longer than
// GossipToTheDeadTime (each side then stops gossiping to the other) and
// checks that the periodic re-join of the seeds puts the cluster back
// together once the network is whole again.
func TestPartitionHeals(t *testing.T) {
	var isolated atomic.Value
	isolated.Store("")
	nodes := newTestClusterWith(t, 3, nil, func(i int, cfg *cluster.Config) {
		cfg.Tune = func(mc *memberlist.Config) {
			tight(mc)
			ip, port, err := mc.Transport.FinalAdvertiseAddr("", 0)
			if err != nil {
				t.Error(err)
			}
			mc.Transport = &cutTransport{Transport: mc.Transport, self: net.JoinHostPort(ip.String(), strconv.Itoa(port)), isolated: &isolated}
		}
	})
	all := func(want ...int) error {
		for i, nd := range nodes {
			if err := sees(nd, want[i]); err != nil {
				return err
			}
		}
		return nil
	}
	waitFor(t, 10*time.Second, func() error { return all(3, 3, 3) })
	isolated.Store(nodes[2].addr)
	waitFor(t, 20*time.Second, func() error { return all(2, 2, 1) })
	time.Sleep(2 * time.Second) // stay apart past GossipToTheDeadTime (1s in tight): this is the condition under test
	isolated.Store("")
	waitFor(t, 20*time.Second, func() error { return all(3, 3, 3) })
}

// TestJoinsSeedThatStartsLater: a node started before its seed joins it
// within seconds of the seed coming up, not at the next periodic re-join.
func TestJoinsSeedThatStartsLater(t *testing.T) {
	seed := testutil.FreePort(t)
	start := func(name, bind string, join []string) *cluster.Cluster {
		return startNode(t, cluster.Config{Name: name, Bind: bind, Join: join, RejoinInterval: time.Hour,
			Meta: func() cluster.Meta { return cluster.Meta{} }, Tune: tight, Logger: quiet})
	}
	early := start("early", "127.0.0.1:0", []string{seed})
	late := start("seed", seed, nil)
	waitFor(t, 10*time.Second, func() error {
		if a, b := len(early.Members()), len(late.Members()); a != 2 || b != 2 {
			return fmt.Errorf("members seen: %d and %d, want 2 and 2", a, b)
		}
		return nil
	})
}

func TestMetadataPropagates(t *testing.T) {
	nodes := newTestCluster(t, 3, nil)
	nodes[2].conns.Store(77)
	waitFor(t, 10*time.Second, func() error {
		for _, m := range nodes[0].Members() {
			if m.Name == "node-2" && m.Meta.Conns == 77 && m.Meta.Push == nodes[2].push {
				return nil
			}
		}
		return fmt.Errorf("node-0 does not see node-2 at 77 connections: %+v", nodes[0].Members())
	})
}

func TestRedirectTarget(t *testing.T) {
	// steady: the arithmetic below is over three members; with tight's
	// 25 ms probes a node starved of CPU (go test -p 3) was declared dead
	// and Excess(400) was 38 of two members.
	nodes := newTestClusterWith(t, 3, nil, func(_ int, cfg *cluster.Config) { cfg.Tune = steady })
	nodes[1].conns.Store(500)
	nodes[2].conns.Store(100)
	waitFor(t, 10*time.Second, func() error {
		seen := map[string]int{}
		for _, m := range nodes[0].Members() {
			seen[m.Name] = m.Meta.Conns
		}
		if seen["node-1"] != 500 || seen["node-2"] != 100 {
			return fmt.Errorf("node-0 sees %v, want node-1 at 500 and node-2 at 100", seen)
		}
		return nil
	})
	// Excess (rebalancing): node-0 at 400 of a fair 333 is above it by more
	// than the 5 % margin: 400 - 351 = 49 to hand over. At 320 it is
	// within the margin (fair 306.7, limit 323), but node-2 lacks more than
	// the margin (100 of 306.7), so node-0 hands over what it holds above
	// the fair share plus one: 320 - 307 = 13.
	if got := nodes[0].Excess(400); got != 49 {
		t.Errorf("Excess(400) = %d, want 49", got)
	}
	if got := nodes[0].Excess(320); got != 13 {
		t.Errorf("Excess(320) = %d, want 13", got)
	}
	if got := nodes[0].Excess(200); got != 0 {
		t.Errorf("Excess(200) = %d, want 0 (below the fair share)", got)
	}
	// node-0 holds 400: total 1000, fair share 333: redirect to node-2.
	if addr, ok := nodes[0].RedirectTarget(400, false); !ok || addr != nodes[2].push {
		t.Errorf("RedirectTarget(400) = %q, %v; want %q", addr, ok, nodes[2].push)
	}
	// At its fair share a node keeps the agent.
	if addr, ok := nodes[0].RedirectTarget(300, false); ok {
		t.Errorf("RedirectTarget(300) sent the agent to %s, want it kept", addr)
	}
	// Redirects count against the target until gossip catches up: after
	// enough of them node-2 stops being the least loaded.
	for range 250 {
		nodes[0].RedirectTarget(400, false)
	}
	if addr, ok := nodes[0].RedirectTarget(400, false); ok && addr == nodes[2].push {
		t.Error("still redirecting to node-2 after 250 redirects estimated there")
	}
	if got := nodes[0].PushNodes(); len(got) != 3 || got[0] != nodes[0].push {
		t.Errorf("PushNodes = %v, want 3 with this node first", got)
	}
}

func TestDNSAnswers(t *testing.T) {
	nodes := newTestClusterWith(t, 3, func(i int, nd *testNode) cluster.Meta {
		return cluster.Meta{Push: nd.push, Conns: []int{300, 100, 200}[i], Capacity: 1000}
	}, func(_ int, cfg *cluster.Config) { cfg.Tune = steady })
	waitFor(t, 10*time.Second, func() error { return sees(nodes[0], 3) })
	d := cluster.NewDNS(nodes[0].Cluster, "dpgate.internal")
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go d.ServeUDP(pc)
	defer pc.Close()
	ask := func(name string, qtype uint16) *dns.Msg {
		m := new(dns.Msg)
		m.SetQuestion(name, qtype)
		c := &dns.Client{Timeout: 5 * time.Second}
		r, _, err := c.Exchange(m, pc.LocalAddr().String())
		if err != nil {
			t.Fatalf("query %s: %v", name, err)
		}
		return r
	}
	r := ask("push.dpgate.internal.", dns.TypeA)
	var ips []string
	for _, rr := range r.Answer {
		ips = append(ips, rr.(*dns.A).A.String())
		if rr.Header().Ttl != 5 {
			t.Errorf("TTL %d, want 5", rr.Header().Ttl)
		}
	}
	if fmt.Sprint(ips) != "[127.0.0.2 127.0.0.3 127.0.0.1]" {
		t.Errorf("A answers %v, want least loaded first: [127.0.0.2 127.0.0.3 127.0.0.1]", ips)
	}
	r = ask("_dpgate-push._tcp.dpgate.internal.", dns.TypeSRV)
	if len(r.Answer) != 3 || len(r.Extra) != 3 {
		t.Fatalf("SRV: %d answers, %d extra; want 3 and 3", len(r.Answer), len(r.Extra))
	}
	first := r.Answer[0].(*dns.SRV)
	if first.Weight != 900 || first.Port != 13295 || first.Target != "node-1.node.dpgate.internal." {
		t.Errorf("first SRV %+v, want node-1 weight 900 (spare) port 13295", first)
	}
	if r := ask("node-2.node.dpgate.internal.", dns.TypeA); len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != "127.0.0.3" {
		t.Errorf("node A record: %v", r.Answer)
	}
	if r := ask("nothing.dpgate.internal.", dns.TypeA); r.Rcode != dns.RcodeNameError {
		t.Errorf("unknown name: rcode %d, want NXDOMAIN", r.Rcode)
	}
	if r := ask("example.com.", dns.TypeA); r.Rcode != dns.RcodeRefused {
		t.Errorf("outside the zone: rcode %d, want REFUSED", r.Rcode)
	}
}

// TestDNSOneRecordPerAddressAndEDNSVersion: nodes on one host (several
// processes on one machine, for more connections than one process may
// hold open) share an address, so push.<domain> names it once (RFC 2181
// section 5: no duplicate records in a set); the SRV answer still lists
// each node with its port. A query with an EDNS version this server does
// not speak is answered BADVERS with version 0 (RFC 6891 section 6.1.3),
// as resolvers probe for it.
func TestDNSOneRecordPerAddressAndEDNSVersion(t *testing.T) {
	nodes := newTestClusterWith(t, 3, func(i int, nd *testNode) cluster.Meta {
		return cluster.Meta{Push: []string{"127.0.0.9:13295", "127.0.0.9:13296", "127.0.0.3:13295"}[i], Capacity: 1000}
	}, func(_ int, cfg *cluster.Config) { cfg.Tune = steady })
	waitFor(t, 10*time.Second, func() error { return sees(nodes[0], 3) })
	d := cluster.NewDNS(nodes[0].Cluster, "dpgate.internal")
	ln, pc, err := cluster.Listen("127.0.0.1:0") // TCP and UDP on one port
	if err != nil {
		t.Fatal(err)
	}
	go d.ServeUDP(pc)
	defer pc.Close()
	go d.ServeTCP(ln)
	defer ln.Close()
	ask := func(m *dns.Msg) *dns.Msg {
		r, _, err := (&dns.Client{Timeout: 5 * time.Second}).Exchange(m, pc.LocalAddr().String())
		if err != nil {
			t.Fatalf("query %v: %v", m.Question, err)
		}
		return r
	}
	q := new(dns.Msg).SetQuestion("_dpgate-push._tcp.dpgate.internal.", dns.TypeSRV)
	waitFor(t, 10*time.Second, func() error { // every node's push address gossiped
		if r := ask(q); len(r.Answer) != 3 {
			return fmt.Errorf("%d SRV records, want 3", len(r.Answer))
		}
		return nil
	})
	for _, qtype := range []uint16{dns.TypeA, dns.TypeANY} {
		m := new(dns.Msg).SetQuestion("push.dpgate.internal.", qtype)
		r, _, err := (&dns.Client{Net: "tcp", Timeout: 5 * time.Second}).Exchange(m, ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		var ips []string
		for _, rr := range r.Answer {
			ips = append(ips, rr.(*dns.A).A.String())
		}
		slices.Sort(ips)
		if fmt.Sprint(ips) != "[127.0.0.3 127.0.0.9]" {
			t.Errorf("push %s: %v, want each address once: [127.0.0.3 127.0.0.9]", dns.TypeToString[qtype], ips)
		}
	}

	// ANY over UDP, the query of reflection attacks: TC and no records
	// (RFC 8482); the same over TCP above got them.
	if r := ask(new(dns.Msg).SetQuestion("push.dpgate.internal.", dns.TypeANY)); !r.Truncated || len(r.Answer)+len(r.Extra) != 0 {
		t.Errorf("ANY over UDP: TC %v, %d answers, %d extra; want TC and none", r.Truncated, len(r.Answer), len(r.Extra))
	}
	q = new(dns.Msg).SetQuestion("push.dpgate.internal.", dns.TypeA)
	q.SetEdns0(1232, false)
	q.IsEdns0().SetVersion(1)
	r := ask(q)
	if r.Rcode != dns.RcodeBadVers || len(r.Answer) != 0 || r.IsEdns0() == nil || r.IsEdns0().Version() != 0 {
		t.Errorf("EDNS version 1: rcode %s, %d answers, OPT %v; want BADVERS, none, an OPT of version 0", dns.RcodeToString[r.Rcode], len(r.Answer), r.IsEdns0())
	}
}

// balancing is the least-busy rule of a cluster without push routing.
type balancing struct{ c *cluster.Cluster }

func (b balancing) Nodes() []string { return b.c.PushNodes() }
func (b balancing) Redirect(sessions int, redirected bool) (string, bool) {
	return b.c.RedirectTarget(sessions, redirected)
}
func (balancing) SessionChanged(string, bool, time.Time) {}
func (balancing) Acked(string, [16]byte)                 {}

// TestAgentsSpreadOverNodes: 600 agents start unevenly, half at node 0
// and a quarter at each other node (an unbalanced DNS answer or agent
// configuration), at 2,000 a second; REDIRECT on connect and rebalancing
// afterwards bring every node within 10 % of 200. Without them node 0
// would hold 300. (3,000 agents took 32 s under -race for the same
// figures in proportion, 1,500 agents 7 s and 11.6 s of CPU.)
func TestAgentsSpreadOverNodes(t *testing.T) {
	t.Parallel() // beside the repair test, which only waits
	const nodesN, agents = 3, 600
	// P-256 alone: the post-quantum hybrid's key shares were a fifth of
	// this test's CPU under -race, and X25519's field arithmetic is Go
	// code the race detector instruments, where P-256's is assembly (a
	// third less CPU). The handshakes are not what this test tests.
	classic := []tls.CurveID{tls.CurveP256}
	gw, _ := tlsconf.Issue(tlsconf.Template{CommonName: "gw"}, nil)
	dir := t.TempDir()
	tlsconf.WriteKeyPair(gw, filepath.Join(dir, "gw.pem"), "")
	id, _ := tlsconf.LoadIdentity(filepath.Join(dir, "gw.pem"), "")
	var servers [nodesN]atomic.Pointer[push.Server] // read by the metadata loops
	addrs := make([]string, nodesN)
	lns := make([]net.Listener, nodesN)
	for i := range nodesN {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns[i], addrs[i] = ln, ln.Addr().String()
	}
	sessions := func(i int) int {
		if s := servers[i].Load(); s != nil {
			return s.Sessions()
		}
		return 0
	}
	nodes := newTestClusterWith(t, nodesN, func(i int, nd *testNode) cluster.Meta {
		return cluster.Meta{Push: addrs[i], Conns: sessions(i), Capacity: 100000}
	}, func(i int, cfg *cluster.Config) {
		// Rebalancing corrects what the redirects of new agents leave
		// uneven (views lag while the ramp loads the CPU).
		cfg.Sessions = func() int { return sessions(i) }
		cfg.Move = func(addrs []string) int {
			if s := servers[i].Load(); s != nil {
				return s.Move(addrs)
			}
			return 0
		}
		cfg.RebalanceAfter = 200 * time.Millisecond
	})
	waitFor(t, 10*time.Second, func() error { return sees(nodes[0], nodesN) })
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait) // runs after the servers' Close (cleanups run last-in first-out)
	for i := range nodesN {
		db, err := store.Open(t.TempDir(), store.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		reg, _ := queue.NewRegistry(db)
		q, err := queue.NewQueue(db)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { q.Close() })
		nd := nodes[i]
		s, err := push.New(push.Config{Identity: id, Auth: push.AuthNone, Queue: q, Registry: reg,
			AcceptRate: 100000, KeyExchange: classic, Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		s.SetCluster(balancing{nd.Cluster})
		servers[i].Store(s)
		wg.Add(1)
		go func() { defer wg.Done(); s.Serve(lns[i]) }()
		t.Cleanup(func() { s.Close() })
	}

	pins, _ := tlsconf.ParsePins([]string{id.Pin()})
	agentTLS := tlsconf.PinnedClientConfig(pins, "gw")
	agentTLS.CurvePreferences = classic
	ctx, cancel := context.WithCancel(context.Background())
	var running sync.WaitGroup
	t.Cleanup(func() { cancel(); running.Wait() })
	for i := range agents {
		entry := addrs[0] // half the agents
		if i%4 == 1 {
			entry = addrs[1]
		} else if i%4 == 3 {
			entry = addrs[2]
		}
		c, err := client.New(client.Config{Servers: []string{entry}, DeviceID: "agent-" + strconv.Itoa(i),
			TLS: agentTLS.Clone(), OnPush: func(wire.Message) {}, Logger: quiet,
			MinBackoff: 50 * time.Millisecond, MaxBackoff: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		running.Add(1)
		go func() { defer running.Done(); c.Run(ctx) }()
		if i%100 == 99 {
			time.Sleep(50 * time.Millisecond) // a ramp: 2,000 agents/s, as an office starting up
		}
	}
	// Generous: with -race and other packages' tests on the same 2 cores
	// the ramp of 3,000 agents took over 2 minutes (node 0 held 35 of its
	// 1,500 then).
	waitFor(t, 5*time.Minute, func() error {
		total := 0
		for i := range servers {
			total += servers[i].Load().Sessions()
		}
		if total != agents {
			return fmt.Errorf("%d of %d agents connected (%d %d %d)", total, agents, sessions(0), sessions(1), sessions(2))
		}
		return nil
	})
	t.Logf("agents per node when all connected: %d %d %d (entered %d %d %d)", sessions(0), sessions(1), sessions(2), agents/2, agents/4, agents/4)
	// Within +-10 % of even, and staying so with every agent connected.
	start := time.Now()
	even := agents / nodesN
	waitFor(t, 2*time.Minute, func() error {
		for i := range servers {
			if n := sessions(i); n < even*9/10 || n > even*11/10 {
				return fmt.Errorf("agents per node %d %d %d, want %d +- 10 %% (%d..%d) each", sessions(0), sessions(1), sessions(2), even, even*9/10, even*11/10)
			}
		}
		if total := sessions(0) + sessions(1) + sessions(2); total != agents {
			return fmt.Errorf("%d of %d agents connected", total, agents)
		}
		return nil
	})
	t.Logf("agents per node: %d %d %d, %s after all had connected", sessions(0), sessions(1), sessions(2), time.Since(start).Round(time.Millisecond))
}

// waitFor is testutil.WaitFor under the short name these tests use.
var waitFor = testutil.WaitFor

// TestDNSSizeAndNames: with 8 nodes of long names the SRV answer is
// larger than 512 bytes. Over UDP without EDNS it fits 512 with TC set,
// and TCP gets it whole; an EDNS buffer of 4,096 is capped at 1,232. Names
// that exist without records answer NOERROR with the SOA, never NXDOMAIN.
func TestDNSSizeAndNames(t *testing.T) {
	const n = 8
	reg := prometheus.NewRegistry() // node-0's, which answers
	nodes := newTestClusterWith(t, n, nil, func(i int, cfg *cluster.Config) {
		cfg.Name = fmt.Sprintf("branch-office-distribution-point-%02d", i)
		cfg.Tune = steady
		if i == 0 {
			cfg.Registerer = reg
		}
	})
	waitFor(t, 20*time.Second, func() error { return sees(nodes[0], n) })
	d := cluster.NewDNS(nodes[0].Cluster, "dpgate.internal")
	ln, pc, err := cluster.Listen("127.0.0.1:0") // TCP and UDP on one port
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go d.ServeUDP(pc)
	defer ln.Close()
	go d.ServeTCP(ln)

	const srv = "_dpgate-push._tcp.dpgate.internal."
	// udp sends one query and returns the raw reply's size and the reply.
	udp := func(q *dns.Msg) (int, int, *dns.Msg) {
		out, _ := q.Pack()
		c, err := net.Dial("udp", pc.LocalAddr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write(out)
		buf := make([]byte, 65536)
		got, err := c.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		r := new(dns.Msg)
		if err := r.Unpack(buf[:got]); err != nil {
			t.Fatal(err)
		}
		return len(out), got, r
	}
	q := new(dns.Msg)
	q.SetQuestion(srv, dns.TypeSRV)
	tcp := &dns.Client{Net: "tcp", Timeout: 5 * time.Second}
	// Every node pushable in node-0's view (gossip of their load) first.
	waitFor(t, 20*time.Second, func() error {
		full, _, err := tcp.Exchange(q, ln.Addr().String())
		if err != nil {
			return err
		}
		if full.Truncated || len(full.Answer) != n || len(full.Extra) != n {
			return fmt.Errorf("over TCP: TC=%v, %d SRV, %d extra; want all %d", full.Truncated, len(full.Answer), len(full.Extra), n)
		}
		return nil
	})
	qlen, rlen, r := udp(q)
	t.Logf("SRV over UDP without EDNS: %d-byte query, %d-byte answer (%.1fx), TC=%v, %d of %d SRV", qlen, rlen, float64(rlen)/float64(qlen), r.Truncated, len(r.Answer), n)
	if rlen > 512 || !r.Truncated {
		t.Errorf("UDP answer of %d bytes, TC=%v; want at most 512 with TC set", rlen, r.Truncated)
	}
	q.SetEdns0(4096, false)
	_, rlen, r = udp(q)
	t.Logf("SRV over UDP with EDNS 4096: %d-byte answer, TC=%v", rlen, r.Truncated)
	if rlen > cluster.MaxUDPSize || r.IsEdns0() == nil || r.IsEdns0().UDPSize() > cluster.MaxUDPSize {
		t.Errorf("EDNS answer of %d bytes, OPT %v; want at most %d and an OPT of at most that", rlen, r.IsEdns0(), cluster.MaxUDPSize)
	}

	ask := func(name string, qtype uint16) *dns.Msg {
		m := new(dns.Msg)
		m.SetQuestion(name, qtype)
		r, _, err := (&dns.Client{Timeout: 5 * time.Second}).Exchange(m, pc.LocalAddr().String())
		if err != nil {
			t.Fatalf("query %s: %v", name, err)
		}
		return r
	}
	soaIn := func(rrs []dns.RR) bool { return len(rrs) == 1 && rrs[0].Header().Rrtype == dns.TypeSOA }
	if r := ask("dpgate.internal.", dns.TypeSOA); r.Rcode != dns.RcodeSuccess || !soaIn(r.Answer) || !r.Authoritative {
		t.Errorf("SOA at the apex: rcode %d, answer %v", r.Rcode, r.Answer)
	}
	for _, name := range []string{"dpgate.internal.", "_tcp.dpgate.internal.", "node.dpgate.internal.", "push.dpgate.internal."} {
		qtype := dns.TypeA
		if name == "push.dpgate.internal." {
			qtype = dns.TypeSRV
		}
		if r := ask(name, qtype); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 0 || !soaIn(r.Ns) {
			t.Errorf("%s %s: rcode %s, %d answers, authority %v; want NOERROR, none, the SOA", name, dns.TypeToString[qtype], dns.RcodeToString[r.Rcode], len(r.Answer), r.Ns)
		}
	}
	if r := ask("nothing.node.dpgate.internal.", dns.TypeA); r.Rcode != dns.RcodeNameError || !soaIn(r.Ns) {
		t.Errorf("unknown node: rcode %s, authority %v; want NXDOMAIN with the SOA", dns.RcodeToString[r.Rcode], r.Ns)
	}
	// An UPDATE (another opcode) is refused by the DNS library before it
	// reaches the zone, and counted too.
	update := new(dns.Msg)
	update.SetUpdate("dpgate.internal.")
	if r, _, err := (&dns.Client{Timeout: 5 * time.Second}).Exchange(update, pc.LocalAddr().String()); err != nil || r.Rcode != dns.RcodeNotImplemented {
		t.Errorf("UPDATE: %v, %v; want NOTIMP", r, err)
	}
	// Every answer above is counted, by transport and response code.
	for _, c := range []struct {
		name  string
		match []string
		min   float64
	}{
		{"dpgate_dns_truncated_total", nil, 1},
		{"dpgate_dns_responses_total", []string{"proto=udp", "rcode=NOERROR"}, 7},
		{"dpgate_dns_responses_total", []string{"proto=udp", "rcode=NXDOMAIN"}, 1},
		{"dpgate_dns_responses_total", []string{"proto=udp", "rcode=NOTIMP"}, 1},
		{"dpgate_dns_responses_total", []string{"proto=tcp", "rcode=NOERROR"}, 1},
	} {
		if got := testutil.Metric(t, reg, c.name, c.match...); got < c.min {
			t.Errorf("%s%v = %v, want at least %v", c.name, c.match, got, c.min)
		}
	}
}

// TestMetaMayReadMembers: the gateway's Meta reads Members (to advertise
// a wildcard listener at this node's own address, as with cluster.bind
// 0.0.0.0:7946 and no cluster.advertise); the refresh loop called Meta
// holding the lock Members takes, and the node hung for good.
func TestMetaMayReadMembers(t *testing.T) {
	var c *cluster.Cluster
	var ready atomic.Bool
	c, err := cluster.New(cluster.Config{Name: "self-reader", Bind: "127.0.0.1:0", RefreshInterval: 10 * time.Millisecond,
		Meta: func() cluster.Meta {
			if ready.Load() {
				_ = c.Members()
			}
			return cluster.Meta{Push: "127.0.0.1:13295", Conns: int(time.Now().UnixNano() % 7)}
		}, Tune: tight, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	ready.Store(true)
	done := make(chan struct{})
	go func() { // returns unless the node hangs
		for range 20 {
			c.Members()
			time.Sleep(10 * time.Millisecond)
		}
		close(done)
	}()
	select {
	case <-done:
		c.Close()
	case <-time.After(30 * time.Second):
		t.Fatal("Members did not answer for 30 s: the refresh loop holds its lock (the node is not closed: Close would wait for that loop)")
	}
}

// TestAloneNodeSaysSo: every node is given the same seeds, its own
// address among them, so the first node up joins only itself. It logged
// "cluster: joined" at start and again each second while alone (joining
// itself counts as one node contacted): a node whose peers were down
// wrote a line a second saying it had joined. Now it says it is alone,
// tries the seeds quietly, and says "joined" once another node is there.
func TestAloneNodeSaysSo(t *testing.T) {
	ln, pc, err := cluster.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	self := ln.Addr().String()
	var log testutil.Buffer
	first := startNode(t, cluster.Config{Name: "first", Stream: ln, Packets: pc, Join: []string{self},
		RefreshInterval: 20 * time.Millisecond, RejoinInterval: time.Hour,
		Meta:   func() cluster.Meta { return cluster.Meta{Push: "127.0.0.1:13295"} },
		Tune:   tight,
		Logger: log.Logger(slog.LevelDebug)})
	waitFor(t, 20*time.Second, func() error { // two retries while alone
		if n := strings.Count(log.String(), `msg="cluster: still alone`); n < 2 {
			return fmt.Errorf("%d retries logged while alone; log:\n%s", n, log.String())
		}
		return nil
	})
	if strings.Contains(log.String(), `msg="cluster: joined"`) {
		t.Errorf("a node alone logged that it joined:\n%s", log.String())
	}
	if !strings.Contains(log.String(), `level=INFO msg="cluster: alone so far`) {
		t.Errorf("a node alone at start did not say so:\n%s", log.String())
	}
	startNode(t, cluster.Config{Name: "second", Bind: "127.0.0.1:0", Join: []string{self},
		RefreshInterval: 20 * time.Millisecond, RejoinInterval: time.Hour,
		Meta: func() cluster.Meta { return cluster.Meta{Push: "127.0.0.2:13295"} }, Tune: tight, Logger: quiet})
	waitFor(t, 20*time.Second, func() error { return sees(&testNode{Cluster: first, name: "first"}, 2) })
}

// TestSecretKeyRotation: the gossip key changes on running nodes in three
// rounds (add the new key second, make it first, drop the old one) and
// the nodes keep gossiping throughout; afterwards a node with only the
// new key joins and one with only the old key cannot.
func TestSecretKeyRotation(t *testing.T) {
	oldKey, newKey := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	var conns atomic.Int64
	nodes := newTestClusterWith(t, 2, func(i int, nd *testNode) cluster.Meta {
		return cluster.Meta{Push: nd.push, Capacity: 1000, Conns: int(conns.Load())}
	}, func(_ int, cfg *cluster.Config) { cfg.SecretKeys = [][]byte{oldKey} })
	waitFor(t, 10*time.Second, func() error { return sees(nodes[1], 2) })
	for round, keys := range [][][]byte{{oldKey, newKey}, {newKey, oldKey}, {newKey}} {
		for _, nd := range nodes {
			if err := nd.SetSecretKeys(keys); err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
		}
		// A metadata change made now reaches the other node: gossip works.
		conns.Store(int64(round + 1))
		waitFor(t, 10*time.Second, func() error {
			for _, m := range nodes[1].Members() {
				if m.Name == "node-0" && m.Meta.Conns == round+1 {
					return nil
				}
			}
			return fmt.Errorf("round %d: node-1 has not seen node-0's change (members %d)", round, len(nodes[1].Members()))
		})
	}
	if err := nodes[0].SetSecretKeys([][]byte{[]byte("short")}); err == nil {
		t.Error("a 5-byte key was taken")
	}
	// Start joins the seeds before it returns, and logs a failure.
	join := func(name string, key []byte) string {
		var log testutil.Buffer
		startNode(t, cluster.Config{Name: name, Bind: "127.0.0.9:0", Join: []string{nodes[0].addr}, SecretKeys: [][]byte{key},
			RejoinInterval: time.Hour, Meta: func() cluster.Meta { return cluster.Meta{} }, Tune: tight,
			Logger: log.Logger(slog.LevelInfo)})
		return log.String()
	}
	if log := join("with-old-key", oldKey); !strings.Contains(log, "no seed answered") {
		t.Errorf("a node with the dropped key joined:\n%s", log)
	}
	if log := join("with-new-key", newKey); !strings.Contains(log, `msg="cluster: joined"`) {
		t.Errorf("a node with the new key did not join:\n%s", log)
	}
}

// BenchmarkLeave: the time a node of three takes to leave in good order
// (Shutdown: its announcement that it leaves, gossiped its number of
// times, then memberlist's leave), on memberlist's production timings.
func BenchmarkLeave(b *testing.B) {
	for range b.N {
		b.StopTimer()
		nodes := newTestClusterWith(b, 3, nil, func(_ int, cfg *cluster.Config) { cfg.Tune = nil })
		waitFor(b, 20*time.Second, func() error { return sees(nodes[0], 3) })
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		b.StartTimer()
		err := nodes[2].Shutdown(ctx)
		b.StopTimer()
		cancel()
		if err != nil {
			b.Fatal(err)
		}
		for _, nd := range nodes[:2] {
			nd.Close()
		}
		b.StartTimer()
	}
}

// TestRestartFindsTheClusterWithoutItsSeed: the seed every node was
// given is gone for good; a node restarted after that joins the others
// through the peers it remembered (PeersFile). Before, it joined its
// seed alone, failed, and stayed a cluster of one beside the others:
// pushes accepted on either side for devices on the other waited until
// the seed came back, which it never did.
func TestRestartFindsTheClusterWithoutItsSeed(t *testing.T) {
	dir := t.TempDir()
	files := []string{"", filepath.Join(dir, "node-1.peers"), filepath.Join(dir, "node-2.peers")}
	nodes := newTestClusterWith(t, 3, nil, func(i int, cfg *cluster.Config) { cfg.PeersFile = files[i] })
	waitFor(t, 10*time.Second, func() error { return sees(nodes[2], 3) })
	waitFor(t, 10*time.Second, func() error { // node-1 remembers node-2, and the seed
		b, _ := os.ReadFile(files[1])
		if !strings.Contains(string(b), nodes[2].addr) {
			return fmt.Errorf("node-1 remembers %q, want %s among them", b, nodes[2].addr)
		}
		return nil
	})
	nodes[0].Close() // the seed, gone for good
	nodes[1].Close() // node-1 crashes
	waitFor(t, 30*time.Second, func() error { return sees(nodes[2], 1) })
	back := startNode(t, cluster.Config{Name: "node-1", Bind: "127.0.0.2:0", Join: []string{nodes[0].addr}, PeersFile: files[1],
		RefreshInterval: 20 * time.Millisecond, RejoinInterval: 200 * time.Millisecond,
		Meta: func() cluster.Meta { return cluster.Meta{Push: "127.0.0.2:13295"} }, Tune: tight, Logger: quiet})
	waitFor(t, 30*time.Second, func() error { return sees(&testNode{Cluster: back, name: "node-1"}, 2) })
}

// oneOfTwoFailed starts node-0 (keeping its failed nodes in a file) and
// node-1, and fails node-1: it returns once node-0 lists it, in the file too.
func oneOfTwoFailed(t *testing.T) (nodes []*testNode, file string, failed []cluster.Failed) {
	t.Helper()
	file = filepath.Join(t.TempDir(), "cluster-failed")
	nodes = newTestClusterWith(t, 2, nil, func(i int, cfg *cluster.Config) {
		if i == 0 {
			cfg.FailedFile = file
		}
	})
	waitFor(t, 10*time.Second, func() error { return sees(nodes[0], 2) })
	nodes[1].Close() // a failure
	// The same failure listed for 2 s, in the file too. Seen once in a
	// suite run, under load: a restart right after node-0 first listed
	// node-1 listed nothing. Most likely node-1's last gossip (an alive
	// of a higher incarnation, sent before its close and read late) made
	// node-0 take it for alive again, and the file was written so.
	var since, stayed time.Time
	waitFor(t, 30*time.Second, func() error {
		failed = nodes[0].Failed()
		if len(failed) != 1 || failed[0].Name != "node-1" {
			since = time.Time{}
			return fmt.Errorf("node-0 lists %v as failed, want node-1", failed)
		}
		if b, _ := os.ReadFile(file); !strings.Contains(string(b), `"since":"`+failed[0].Since.Format(time.RFC3339Nano)) {
			return fmt.Errorf("%s holds %q, want node-1 failed since %s", file, b, failed[0].Since.Format(time.RFC3339Nano))
		}
		if !failed[0].Since.Equal(since) {
			since, stayed = failed[0].Since, time.Now()
		}
		if time.Since(stayed) < 2*time.Second {
			return errors.New("node-1 failed: waiting to see it stay so")
		}
		return nil
	})
	return nodes, file, failed
}

// restartNode starts a node of newTestCluster's timings (as node name
// again, or a new one) on bind, joining join, keeping its failed nodes in
// file ("": none); its push address is 127.0.0.N:13295 as newTestCluster
// gives node-N-1, its Boot now.
func restartNode(t *testing.T, name, bind string, join []string, file string) *cluster.Cluster {
	t.Helper()
	host, _, _ := net.SplitHostPort(bind)
	boot := time.Now().UnixNano()
	return startNode(t, cluster.Config{Name: name, Bind: bind, Join: join, FailedFile: file,
		RefreshInterval: 20 * time.Millisecond, RejoinInterval: 200 * time.Millisecond, Tune: tight, Logger: quiet,
		Meta: func() cluster.Meta { return cluster.Meta{Push: host + ":13295", Boot: boot} }})
}

// TestFailedNodesToldToANodeRestartedInPlace: a node restarted at its
// address before the others saw it fail (an upgrade, a quick restart,
// its data directory new) comes back as an update of itself, not a join;
// it is told of the failed nodes all the same.
func TestFailedNodesToldToANodeRestartedInPlace(t *testing.T) {
	t.Parallel()
	nodes := newTestCluster(t, 3, nil)
	waitFor(t, 10*time.Second, func() error { return sees(nodes[0], 3) })
	nodes[2].Close() // a failure
	waitFor(t, 30*time.Second, func() error {
		if f := nodes[0].Failed(); len(f) != 1 {
			return fmt.Errorf("node-0 lists %v as failed, want node-2", f)
		}
		return nil
	})
	nodes[1].Close()
	again := restartNode(t, "node-1", nodes[1].addr, []string{nodes[0].addr}, "")
	waitFor(t, 30*time.Second, func() error {
		if f := again.Failed(); len(f) != 1 || f[0].Name != "node-2" {
			return fmt.Errorf("node-1, restarted, lists %+v as failed, want node-2", f)
		}
		return nil
	})
}

// TestFailedNodesSurviveARestart: a node keeps the nodes it saw fail in
// FailedFile. Seen: "systemctl reload dpgate" (an upgrade: a new process)
// on a node that listed a failed peer cleared it from dpgate members,
// /v1/status, dpgate_cluster_failed_nodes and its alert, and from the
// not_reached of a push to all, with the peer still dead. After a
// restart the failed node is listed again with the time it failed, until
// it comes back.
func TestFailedNodesSurviveARestart(t *testing.T) {
	t.Parallel()
	nodes, file, failed := oneOfTwoFailed(t)
	nodes[0].Close() // the restart
	again := restartNode(t, "node-0", "127.0.0.1:0", nil, file)
	got := again.Failed()
	if len(got) != 1 || got[0].Name != "node-1" || !got[0].Since.Equal(failed[0].Since) || got[0].Meta.Push != nodes[1].push || got[0].Addr != failed[0].Addr {
		t.Fatalf("after a restart, Failed() = %+v, want %+v", got, failed)
	}
	// node-1 comes back: no longer failed, here and in the file.
	self := again.Members()[0].Addr // alone
	restartNode(t, "node-1", "127.0.0.2:0", []string{self}, "")
	waitFor(t, 30*time.Second, func() error {
		if f := again.Failed(); len(f) != 0 {
			return fmt.Errorf("node-1 back, Failed() = %v", f)
		}
		if b, _ := os.ReadFile(file); strings.Contains(string(b), "node-1") {
			return fmt.Errorf("node-1 back, %s still holds %q", file, b)
		}
		return nil
	})
}

// TestFailedNodesLearnedByJoiners: a node that joins after another
// failed lists it too, so every node's members, status and a push to
// all's not_reached agree, and a Forget on it holds everywhere, even on
// a node that was down when it was made. Seen: node-3, started after
// node-2 was killed, listed node-2 nowhere; a push to all through it
// answered without not_reached, and `dpgate members forget node-2` there
// said node-2 was not failed, while node-1 listed it.
func TestFailedNodesLearnedByJoiners(t *testing.T) {
	t.Parallel()
	nodes, file, failed := oneOfTwoFailed(t)
	late := restartNode(t, "node-2", "127.0.0.3:0", []string{nodes[0].addr}, "")
	// Both list node-1 failed since the same time: node-0's, or a later
	// one should either node have seen node-1 flap (under CI load the
	// joiner once listed it 0.5 s later: the later record wins on both).
	waitFor(t, 30*time.Second, func() error {
		got, want := late.Failed(), nodes[0].Failed()
		if len(got) != 1 || got[0].Name != "node-1" || len(want) != 1 || !got[0].Since.Equal(want[0].Since) || got[0].Meta.Push != nodes[1].push {
			return fmt.Errorf("node-2, joined after node-1 failed, lists %+v as failed; node-0 lists %+v", got, want)
		}
		if !got[0].Since.Equal(failed[0].Since) {
			t.Logf("node-1 failed since %s on both, not %s as node-0 first listed", got[0].Since, failed[0].Since)
		}
		return nil
	})

	// node-0 goes down with node-1 in its file; node-1 is forgotten
	// meanwhile. node-0 back must not list node-1 again, nor make node-2 do so.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := nodes[0].Shutdown(ctx); err != nil { // a leave: node-2 need not detect a failure
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, func() error {
		if n := len(late.Members()); n != 1 {
			return fmt.Errorf("node-2 sees %d members after node-0 left, want 1", n)
		}
		return nil
	})
	if err := late.Forget("node-1"); err != nil {
		t.Fatal(err)
	}
	back := restartNode(t, "node-0", "127.0.0.1:0", []string{late.Members()[0].Addr}, file)
	noneFailed := func() error {
		for i, c := range []*cluster.Cluster{back, late} {
			// Seen once in a suite run (not in 12 runs side by side under
			// load): "1 members, want 2" for 30 s; which node, and what it
			// held, were not said.
			if m := c.Members(); len(m) != 2 {
				return fmt.Errorf("%s sees %d members, want 2: %+v; failed %+v", [...]string{"node-0 (back)", "node-2"}[i], len(m), m, c.Failed())
			}
			if got := c.Failed(); len(got) != 0 {
				return fmt.Errorf("after node-1 was forgotten and node-0 came back, a node lists %+v as failed", got)
			}
		}
		return nil
	}
	waitFor(t, 30*time.Second, noneFailed)
	// Both have told each other what they know by now; node-1 stays
	// forgotten (a starved test may see node-0 flap, which is listed).
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		for _, c := range []*cluster.Cluster{back, late} {
			for _, f := range c.Failed() {
				if f.Name == "node-1" {
					t.Fatalf("node-1, forgotten, listed again as failed: %+v", f)
				}
			}
		}
	}
}

// TestNameConflictReported: two nodes given the same name (machines
// cloned from one image share the host name, node.name's default). Seen:
// each stayed a cluster of one, saying "alone so far (the seeds that
// answered were this node)", pushes were not routed between them, and
// the only trace was memberlist's "[ERR] Conflicting address" among the
// warnings. A conflict that lasts (a node moved to a new address
// conflicts with its old one only until that is declared dead) is now an
// error in the log, in Conflicts() and in a gauge, on both nodes.
func TestNameConflictReported(t *testing.T) {
	t.Parallel()
	var logA, logB testutil.Buffer
	regA := prometheus.NewRegistry()
	a := startNode(t, cluster.Config{Name: "twin", Bind: "127.0.0.1:0", Tune: tight, Logger: logA.Logger(slog.LevelInfo),
		RefreshInterval: 20 * time.Millisecond, RejoinInterval: 200 * time.Millisecond, ConflictAfter: time.Second, Registerer: regA,
		Meta: func() cluster.Meta { return cluster.Meta{Push: "127.0.0.1:13295"} }})
	addrA := a.Members()[0].Addr
	b := startNode(t, cluster.Config{Name: "twin", Bind: "127.0.0.2:0", Join: []string{addrA}, Tune: tight, Logger: logB.Logger(slog.LevelInfo),
		RefreshInterval: 20 * time.Millisecond, RejoinInterval: 200 * time.Millisecond, ConflictAfter: time.Second,
		Meta: func() cluster.Meta { return cluster.Meta{Push: "127.0.0.2:13295"} }})
	addrB := b.Members()[0].Addr
	for _, side := range []struct {
		c     *cluster.Cluster
		log   *testutil.Buffer
		other string
	}{{a, &logA, addrB}, {b, &logB, addrA}} {
		waitFor(t, 30*time.Second, func() error {
			cs := side.c.Conflicts()
			if len(cs) != 1 || cs[0].Name != "twin" || cs[0].Addr != side.other {
				return fmt.Errorf("conflicts %+v, want twin at %s", cs, side.other)
			}
			return nil
		})
		waitFor(t, 10*time.Second, func() error {
			if !strings.Contains(side.log.String(), `level=ERROR msg="cluster: another node uses this node's name`) {
				return errors.New("no error logged for the conflict yet")
			}
			return nil
		})
	}
	if n := testutil.Metric(t, regA, "dpgate_cluster_name_conflicts"); n != 1 {
		t.Errorf("dpgate_cluster_name_conflicts %v, want 1", n)
	}
}
