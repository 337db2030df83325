package gateway

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/dpgate/dpgate/internal/admin"
	"github.com/dpgate/dpgate/internal/store"
	"github.com/dpgate/dpgate/internal/testutil"
	"github.com/dpgate/dpgate/tlsconf"
)

var waitFor = testutil.WaitFor

func TestGatewaysFormACluster(t *testing.T) {
	t.Parallel()
	g1, api1, _ := newTestGateway(t, "cluster:\n  bind: 127.0.0.1:0\n  dns:\n    listen: 127.0.0.1:0\n")
	b1 := g1.clusterAddr
	g2, _, _ := newTestGateway(t, fmt.Sprintf("cluster:\n  bind: 127.0.0.1:0\n  join: [%s]\n", b1))
	ctx := context.Background()
	members := func() []ClusterMember {
		var st Status
		if err := api1.Do(ctx, "GET", "/v1/status", nil, &st); err != nil {
			t.Fatal(err)
		}
		return st.Cluster
	}
	waitFor(t, 20*time.Second, func() error {
		if m := members(); len(m) != 2 || m[0].Push == "" || m[1].Push == "" {
			return fmt.Errorf("cluster members %+v, want 2 with push addresses", m)
		}
		return nil
	})
	// The API names a member's figures as the rest of it does, not by the
	// gossip's one-letter keys ("p", "c", "k" under "meta").
	var raw struct {
		Cluster []map[string]any `json:"cluster"`
	}
	if err := api1.Do(ctx, "GET", "/v1/status", nil, &raw); err != nil {
		t.Fatal(err)
	}
	for _, m := range raw.Cluster {
		for _, k := range []string{"name", "addr", "state", "push", "admin", "pin", "agents", "capacity", "load", "version"} {
			if _, ok := m[k]; !ok {
				t.Errorf("/v1/status cluster member %v has no %q", m, k)
			}
		}
		if _, ok := m["meta"]; ok {
			t.Errorf("/v1/status cluster member %v has the gossip's meta", m)
		}
		if m["state"] != "alive" {
			t.Errorf("member %v: state %v, want alive", m["name"], m["state"])
		}
	}

	// DNS: the SRV record names both push servers.
	dnsAddr := g1.dnsAddr
	m := new(dns.Msg)
	m.SetQuestion("_dpgate-push._tcp.dpgate.internal.", dns.TypeSRV)
	r, _, err := (&dns.Client{Timeout: 5 * time.Second}).Exchange(m, dnsAddr)
	if err != nil {
		t.Fatal(err)
	}
	var ports []string
	for _, rr := range r.Answer {
		ports = append(ports, fmt.Sprint(rr.(*dns.SRV).Port))
	}
	_, p1, _ := net.SplitHostPort(g1.pushAddr)
	_, p2, _ := net.SplitHostPort(g2.pushAddr)
	want := []string{p1, p2}
	sort.Strings(ports)
	sort.Strings(want)
	if fmt.Sprint(ports) != fmt.Sprint(want) {
		t.Errorf("SRV ports %v, want the two push ports %v", ports, want)
	}

	// The allow-list is the same on both: added on node 1, allowed on node
	// 2; removed on node 2, refused on node 1, within seconds.
	agent, _ := tlsconf.Issue(tlsconf.Template{CommonName: "dev-c", Client: true}, nil)
	if err := api1.Do(ctx, "POST", "/v1/certs", tlsconf.CertPEM(agent), nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, func() error { return g2.AllowList().Check(agent.Leaf) })
	if _, err := g2.AllowList().Remove(tlsconf.Fingerprint(agent.Leaf)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, func() error {
		if g1.AllowList().Check(agent.Leaf) == nil {
			return errors.New("node 1 still allows the certificate removed on node 2")
		}
		return nil
	})

	// A node joining later gets the whole list (push/pull at join),
	// tombstones included.
	later, _ := tlsconf.Issue(tlsconf.Template{CommonName: "dev-d", Client: true}, nil)
	g1.AllowList().Add(later.Leaf)
	g3, _, _ := newTestGateway(t, fmt.Sprintf("cluster:\n  bind: 127.0.0.1:0\n  join: [%s]\n", b1))
	waitFor(t, 10*time.Second, func() error { return g3.AllowList().Check(later.Leaf) })
	if g3.AllowList().Check(agent.Leaf) == nil {
		t.Error("the joining node allows a certificate removed before it joined")
	}
	sctx3, cancel3 := context.WithTimeout(ctx, 10*time.Second)
	defer cancel3()
	g3.Shutdown(sctx3)

	// Node 2 leaves: node 1 sees it go.
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	g2.Shutdown(sctx)
	waitFor(t, 20*time.Second, func() error {
		if n := len(members()); n != 1 {
			return fmt.Errorf("after node 2 left: %d members, want 1", n)
		}
		return nil
	})
}

// TestNameConflictInStatus: two gateways given one node name (cloned
// machines' host names) report it in /v1/status, for dpgate status and
// dpgate members to show.
func TestNameConflictInStatus(t *testing.T) {
	t.Parallel()
	var apis []*admin.Client
	var addrs []string
	var first *Gateway
	for i := range 2 {
		dir := t.TempDir()
		cfg := bareConfig(t, dir, "off", "")
		cfg.Node.Name = "cloned"
		cfg.Cluster.Bind = fmt.Sprintf("127.0.0.%d:0", i+1)
		cfg.Cluster.Join = addrs
		cfg.Cluster.SecretKeyFile = filepath.Join(dir, "gossip.key")
		os.WriteFile(cfg.Cluster.SecretKeyFile, []byte(testGossipKey+"\n"), 0o600)
		g, api := startTestGatewayWith(t, cfg, Options{ConflictAfter: time.Second})
		t.Cleanup(func() { g.Close() })
		apis, addrs = append(apis, api), append(addrs, g.clusterAddr)
		if i == 0 {
			first = g
		}
	}
	waitFor(t, 30*time.Second, func() error {
		var st Status
		if err := apis[0].Do(context.Background(), "GET", "/v1/status", nil, &st); err != nil {
			return err
		}
		if c := st.ClusterConflicts; len(c) != 1 || c[0].Name != "cloned" || c[0].Addr != addrs[1] || c[0].Known != addrs[0] {
			return fmt.Errorf("cluster_conflicts %+v, want cloned at %s (known at %s)", c, addrs[1], addrs[0])
		}
		return nil
	})
	// The console's Overview says so above the members.
	c, _ := signIn(t, first)
	body := consoleGet(t, c, first, "/")
	if !strings.Contains(string(body), `id="name-conflict"`) || !strings.Contains(string(body), addrs[1]) {
		t.Errorf("the Overview does not show the name conflict with %s", addrs[1])
	}
}

// TestPushPullStateReadByEarlierVersions: the push/pull state of this
// version (the allow-list's entries, then the cluster's failed nodes as
// one more element) merges whole into the allow-list of a node of an
// earlier version, whose Merge is allowState.Merge as it is here: the
// extra element has no fingerprint and is skipped. A rolling upgrade
// keeps the allow-lists in step.
func TestPushPullStateReadByEarlierVersions(t *testing.T) {
	db, err := store.Open(t.TempDir(), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	newNode, _ := tlsconf.NewAllowList(db)
	c, _ := tlsconf.Issue(tlsconf.Template{CommonName: "pc-1", Client: true}, nil)
	if _, err := newNode.Add(c.Leaf); err != nil {
		t.Fatal(err)
	}
	// What cluster sends in a push/pull (cluster/failed.go): an element
	// of its own, then the state's.
	entries := (allowState{newNode}).LocalState()
	state := append([]byte(`[{"failed_nodes":[{"name":"node-2","addr":"127.0.0.3:7946","since":"2026-12-07T19:15:29Z"},{"name":"node-4","cleared":"2026-12-07T19:15:41Z"}]},`), entries[1:]...)

	db2, err := store.Open(t.TempDir(), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db2.Close()
	oldNode, _ := tlsconf.NewAllowList(db2)
	if err := (allowState{oldNode}).Merge(state); err != nil {
		t.Fatalf("an earlier version merging %s: %v", state, err)
	}
	if err := oldNode.Check(c.Leaf); err != nil {
		t.Errorf("the earlier version's allow-list after the merge: %v, want pc-1 allowed", err)
	}
}
