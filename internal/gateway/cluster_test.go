package gateway

import (
	"context"
	"fmt"
	"net"
	"sort"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// freeUDPTCPPort finds a loopback port free for both TCP and UDP, as
// memberlist binds both.
func freeUDPTCPPort(t *testing.T) string {
	for range 20 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		pc, err := net.ListenPacket("udp", addr)
		ln.Close()
		if err == nil {
			pc.Close()
			return addr
		}
	}
	t.Fatal("no port free for both TCP and UDP")
	return ""
}

func TestTwoGatewaysFormACluster(t *testing.T) {
	b1, b2 := freeUDPTCPPort(t), freeUDPTCPPort(t)
	g1, api1, _ := newTestGateway(t, fmt.Sprintf("cluster:\n  bind: %s\n  dns:\n    listen: 127.0.0.1:0\n", b1))
	g2, _, _ := newTestGateway(t, fmt.Sprintf("cluster:\n  bind: %s\n  join: [%s]\n", b2, b1))
	ctx := context.Background()
	members := func() []ClusterMember {
		var st Status
		if err := api1.Do(ctx, "GET", "/v1/status", nil, &st); err != nil {
			t.Fatal(err)
		}
		return st.Cluster
	}
	deadline := time.Now().Add(20 * time.Second)
	for len(members()) != 2 || members()[0].Meta.Push == "" || members()[1].Meta.Push == "" {
		if time.Now().After(deadline) {
			t.Fatalf("cluster members %+v, want 2 with push addresses", members())
		}
		time.Sleep(20 * time.Millisecond)
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

	// Node 2 leaves: node 1 sees it go.
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	g2.Shutdown(sctx)
	deadline = time.Now().Add(20 * time.Second)
	for len(members()) != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("after node 2 left: %d members, want 1", len(members()))
		}
		time.Sleep(20 * time.Millisecond)
	}
}
