//go:build linux

// Package chaos is dpgate's fault-injection harness: real "dpgate serve"
// processes, each in its own network namespace on a private bridge, with
// agents and publishers running while nodes are killed, paused, cut off,
// moved, filled and corrupted. Every publish attempt, delivery and fault
// is recorded, and Check judges the history against the promise: no push
// answered 2xx is lost.
//
// Files: net.go (namespaces, bridge, partitions with nftables), node.go
// (a node's process, data directory and faults), run.go (agents,
// publishers, the fault schedule), check.go (the checker and the report).
//
// It needs root, ip (iproute2), nft (nftables) and mount (tmpfs).
package chaos

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
)

// network is the bridge in the host's namespace that every node's
// namespace hangs off with a veth pair; the harness (agents, publishers)
// reaches the nodes through it.
type network struct {
	prefix string     // names: <prefix>br, <prefix>v<i>, <prefix>n<i>
	subnet netip.Addr // x.y.z.0 of a /24
	nss    []string
}

func run(args ...string) error {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// networks numbers the networks this process makes, so that runs side
// by side (TestChaosShort's groups) get different ones.
var networks atomic.Int64

// newNetwork makes the bridge. The subnet is 10.77.<k>.0/24, k from the
// process id and the runs it made before, and the next free k when that
// bridge exists (another process's run, or one that did not clean up).
func newNetwork() (*network, error) {
	start := os.Getpid() + 37*int(networks.Add(1))
	var err error
	for i := range 200 {
		k := (start + i) % 200
		n := &network{prefix: fmt.Sprintf("dpc%03d", k), subnet: netip.AddrFrom4([4]byte{10, 77, byte(k), 0})}
		if err = run("ip", "link", "add", n.prefix+"br", "type", "bridge"); err == nil {
			return n.up()
		}
		if !strings.Contains(err.Error(), "exists") {
			return nil, err
		}
	}
	return nil, err
}

// up addresses the new bridge and brings it up.
func (n *network) up() (*network, error) {
	br := n.prefix + "br"
	if err := run("ip", "addr", "add", n.host().String()+"/24", "dev", br); err != nil {
		n.close()
		return nil, err
	}
	if err := run("ip", "link", "set", br, "up"); err != nil {
		n.close()
		return nil, err
	}
	return n, nil
}

// host is the harness's address on the bridge: x.y.z.1.
func (n *network) host() netip.Addr { return n.addr(1) }

func (n *network) addr(last byte) netip.Addr {
	b := n.subnet.As4()
	b[3] = last
	return netip.AddrFrom4(b)
}

// addNode makes node i's namespace with its first address x.y.z.(10+i)
// and returns the namespace's name.
func (n *network) addNode(i int) (string, error) {
	ns, veth := fmt.Sprintf("%sn%d", n.prefix, i), fmt.Sprintf("%sv%d", n.prefix, i)
	if err := run("ip", "netns", "add", ns); err != nil {
		return "", err
	}
	n.nss = append(n.nss, ns)
	steps := [][]string{
		{"ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns},
		{"ip", "link", "set", veth, "master", n.prefix + "br", "up"},
		{"ip", "-n", ns, "addr", "add", n.addr(byte(10+i)).String() + "/24", "dev", "eth0"},
		{"ip", "-n", ns, "link", "set", "eth0", "up"},
		{"ip", "-n", ns, "link", "set", "lo", "up"},
	}
	for _, s := range steps {
		if err := run(s...); err != nil {
			return ns, err
		}
	}
	return ns, nil
}

// addAddr gives a namespace another address (a node restarted elsewhere).
func (n *network) addAddr(ns string, a netip.Addr) error {
	return run("ip", "-n", ns, "addr", "add", a.String()+"/24", "dev", "eth0")
}

// isolate drops, inside ns, everything to and from the peers' addresses:
// the node is cut off from the other nodes, while agents and publishers
// (the harness's address) still reach it, the case where a node keeps
// accepting pushes without its peers.
func (n *network) isolate(ns string, peers []netip.Addr) error {
	var set []string
	for _, p := range peers {
		set = append(set, p.String())
	}
	rules := fmt.Sprintf(`table inet chaos {
	chain in { type filter hook input priority 0; ip saddr { %[1]s } drop; }
	chain out { type filter hook output priority 0; ip daddr { %[1]s } drop; }
}`, strings.Join(set, ", "))
	cmd := exec.Command("ip", "netns", "exec", ns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft in %s: %v: %s", ns, err, out)
	}
	return nil
}

// heal removes isolate's rules.
func (n *network) heal(ns string) error {
	return run("ip", "netns", "exec", ns, "nft", "delete", "table", "inet", "chaos")
}

// close removes the namespaces (their veth ends go with them) and the
// bridge.
func (n *network) close() {
	for i, ns := range n.nss {
		exec.Command("ip", "link", "del", fmt.Sprintf("%sv%d", n.prefix, i)).Run() // the veth pair, even while the namespace lingers
		exec.Command("ip", "netns", "del", ns).Run()
	}
	exec.Command("ip", "link", "del", n.prefix+"br").Run()
}
