//go:build linux

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/dpgate/dpgate/internal/admin"
	"github.com/dpgate/dpgate/internal/e2e"
	"github.com/dpgate/dpgate/internal/gateway"
	"github.com/dpgate/dpgate/internal/testutil"
	"github.com/dpgate/dpgate/push/client"
	"github.com/dpgate/dpgate/push/wire"
	"github.com/dpgate/dpgate/tlsconf"
)

// gossipKeyFile writes a cluster key (cluster.secret_key_file, required
// with cluster.bind) for the nodes of one test.
func gossipKeyFile(t *testing.T) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "gossip.key")
	if r := exec.Command("openssl", "rand", "-base64", "-out", f, "32"); r.Run() != nil {
		t.Fatal("openssl rand: cannot make a gossip key")
	}
	os.Chmod(f, 0o600) // a secret: the gateway refuses one every user may read
	return f
}

// clusterAgent is one agent of the failover test: which node it is
// connected to, and which pushes it received.
type clusterAgent struct {
	id     string
	mu     sync.Mutex
	server string // "" while disconnected
	got    map[string]bool
}

// TestClusterSurvivesKill9 runs three "dpgate serve" processes as one
// cluster with 300 agents, kills one node with SIGKILL while pushes keep
// coming, and checks that every agent ends up on a survivor and every
// push any node accepted (answered 2xx) is delivered. dig checks the DNS
// answers before and after.
func TestClusterSurvivesKill9(t *testing.T) {
	// Real processes that mostly wait: side by side with the other long ones.
	t.Parallel()
	if _, err := exec.LookPath("dig"); err != nil {
		t.Fatal("dig is needed (Debian package dnsutils; .ci/run installs it)")
	}
	const nodesN, agentsN = 3, 300
	var seed, dnsAddr string // the first node's, bound on port 0 and read from its log
	var (
		srvs   []*server
		apis   []*admin.Client
		pushes []string
		pins   []string
		cfgs   []string
	)
	gossipKey := gossipKeyFile(t)
	for i := range nodesN {
		dir := t.TempDir()
		extra := "  dns:\n    listen: 127.0.0.1:0\n"
		if i > 0 {
			extra = fmt.Sprintf("  join: [%s]\n", seed)
		}
		bind := "127.0.0.1:0"
		pushAddr, adminAddr := testutil.FreePort(t), testutil.FreePort(t)
		cfg := filepath.Join(dir, "dpgate.yaml")
		os.WriteFile(cfg, []byte(fmt.Sprintf("node:\n  name: node-%d\n  data_dir: data\nadmin:\n  listen: %s\npush:\n  listen: %s\n  auth: none\n  quic: false\nwake:\n  listen: \"off\"\n  shutdown_listen: \"off\"\ncluster:\n  bind: %s\n  secret_key_file: %s\n%s",
			i, adminAddr, pushAddr, bind, gossipKey, extra)), 0o644)
		s := startServe(t, nil, "-c", cfg)
		s.WaitLog(t, `msg="push server listening"`)
		if i == 0 {
			seed = s.WaitLog(t, `msg="cluster started" addr=(\S+)`)[1]
			dnsAddr = s.WaitLog(t, `msg="DNS listening" addr=(\S+)`)[1]
		}
		srvs, apis, pushes, cfgs = append(srvs, s), append(apis, apiClient(t, cfg)), append(pushes, pushAddr), append(cfgs, cfg)
		pins = append(pins, e2e.GatewayPin(t, bin, dir))
	}
	ctx := context.Background()
	members := func(api *admin.Client) (int, error) {
		var st gateway.Status
		if err := api.Do(ctx, "GET", "/v1/status", nil, &st); err != nil {
			return 0, err
		}
		return len(st.Cluster), nil
	}
	waitFor(t, 30*time.Second, func() error {
		for i, api := range apis {
			if n, err := members(api); err != nil || n != nodesN {
				return fmt.Errorf("node %d sees %d members (%v)", i, n, err)
			}
		}
		return nil
	})
	srvPorts := func() []string {
		out, code := tool(t, nil, "dig", "@127.0.0.1", "-p", portOf(dnsAddr), "+short", "+time=2", "+tries=3", "_dpgate-push._tcp.dpgate.internal", "SRV")
		if code != 0 {
			t.Fatalf("dig exit %d: %s", code, out)
		}
		var ports []string
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			if f := strings.Fields(l); len(f) == 4 { // priority weight port target
				ports = append(ports, f[2])
			}
		}
		slices.Sort(ports)
		return ports
	}
	wantPorts := func(addrs ...string) []string {
		var ps []string
		for _, a := range addrs {
			ps = append(ps, portOf(a))
		}
		slices.Sort(ps)
		return ps
	}
	waitFor(t, 20*time.Second, func() error {
		if got, want := srvPorts(), wantPorts(pushes...); !slices.Equal(got, want) {
			return fmt.Errorf("dig SRV ports %v, want %v", got, want)
		}
		return nil
	})

	// 300 agents, each given the three nodes starting at a different one.
	pinSet, err := tlsconf.ParsePins(pins)
	if err != nil {
		t.Fatal(err)
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	agents := make([]*clusterAgent, agentsN)
	runCtx, stopAgents := context.WithCancel(ctx)
	var running sync.WaitGroup
	t.Cleanup(func() { stopAgents(); running.Wait() })
	for i := range agents {
		a := &clusterAgent{id: fmt.Sprintf("agent-%03d", i), got: map[string]bool{}}
		agents[i] = a
		servers := append(slices.Clone(pushes[i%nodesN:]), pushes[:i%nodesN]...)
		c, err := client.New(client.Config{Servers: servers, DeviceID: a.id, TLS: tlsconf.PinnedClientConfig(pinSet, "dpgate"),
			MaxBackoff: 2 * time.Second, Logger: quiet,
			OnPush: func(m wire.Message) {
				a.mu.Lock()
				a.got[string(m.Payload)] = true
				a.mu.Unlock()
			},
			OnEvent: func(e client.Event) {
				a.mu.Lock()
				switch e.Kind {
				case "connected":
					a.server = e.Server
				case "disconnected", "drain", "error", "redirect":
					a.server = ""
				}
				a.mu.Unlock()
			}})
		if err != nil {
			t.Fatal(err)
		}
		running.Add(1)
		go func() { defer running.Done(); c.Run(runCtx) }()
	}
	connectedTo := func(alive []string) error {
		for _, a := range agents {
			a.mu.Lock()
			s := a.server
			a.mu.Unlock()
			if !slices.Contains(alive, s) {
				return fmt.Errorf("%s is connected to %q, want one of %v", a.id, s, alive)
			}
		}
		return nil
	}
	waitFor(t, 60*time.Second, func() error { return connectedTo(pushes) })

	// Pushes: one to every agent before the failure, then a stream to
	// random agents through random nodes while one node is killed.
	var (
		acceptedMu sync.Mutex
		accepted   = map[string]string{} // payload -> device
		refused    [3]atomic.Int64       // by node
	)
	send := func(node int, dev, data string) {
		var reply gateway.PushReply
		if err := apis[node].Do(ctx, "POST", "/v1/devices/"+dev+"/push", gateway.PushRequest{Data: &data}, &reply); err != nil {
			refused[node].Add(1) // not accepted: the sender would retry; not counted
			return
		}
		acceptedMu.Lock()
		accepted[data] = dev
		acceptedMu.Unlock()
	}
	for i, a := range agents {
		send(i%nodesN, a.id, fmt.Sprintf("before %d", i))
	}
	if n := refused[0].Load() + refused[1].Load() + refused[2].Load(); n != 0 {
		t.Fatalf("%d pushes refused with every node up", n)
	}
	const victim = 1
	// The stream runs through the failure and the re-homing, and for a
	// second after every agent is back (stopStream), at most 1,500.
	streamDone, stopStream := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(streamDone)
		for i := 0; i < 1500; i++ {
			select {
			case <-stopStream:
				return
			default:
			}
			send(rand.IntN(nodesN), agents[rand.IntN(agentsN)].id, fmt.Sprintf("during %d", i))
			time.Sleep(2 * time.Millisecond)
		}
	}()
	time.Sleep(300 * time.Millisecond) // some of the stream before the kill
	killed := time.Now()
	srvs[victim].Cmd.Process.Signal(syscall.SIGKILL)
	<-srvs[victim].Done
	survivors := []string{pushes[0], pushes[2]}
	var detected, rehomed time.Duration
	waitFor(t, 30*time.Second, func() error {
		for _, i := range []int{0, 2} {
			if n, err := members(apis[i]); err != nil || n != nodesN-1 {
				return fmt.Errorf("node %d sees %d members (%v)", i, n, err)
			}
		}
		detected = time.Since(killed)
		return nil
	})
	// dpgate members --json lists the failed node too, as its table does.
	r := dpgate(t, nil, "members", "-c", cfgs[0], "--json")
	var listed []gateway.ClusterMember
	if err := json.Unmarshal([]byte(r.Stdout), &listed); err != nil || r.Code != 0 {
		t.Fatalf("dpgate members --json: exit %d, %v: %s%s", r.Code, err, r.Stdout, r.Stderr)
	}
	states := map[string]string{}
	for _, m := range listed {
		states[m.Name] = m.State
		if m.State == "failed" && (m.FailedSince == nil || m.Push != pushes[victim]) {
			t.Errorf("members --json: failed node %+v, want its push address %s and since when", m, pushes[victim])
		}
	}
	if want := map[string]string{"node-0": "alive", "node-1": "failed", "node-2": "alive"}; !maps.Equal(states, want) {
		t.Errorf("dpgate members --json: states %v, want %v", states, want)
	}
	waitFor(t, 60*time.Second, func() error {
		if err := connectedTo(survivors); err != nil {
			return err
		}
		rehomed = time.Since(killed)
		return nil
	})
	time.AfterFunc(time.Second, func() { close(stopStream) })
	<-streamDone
	acceptedMu.Lock()
	n := len(accepted)
	acceptedMu.Unlock()
	t.Logf("accepted %d pushes; refused by node 0, 1 (killed), 2: %d, %d, %d", n, refused[0].Load(), refused[1].Load(), refused[2].Load())
	if refused[0].Load()+refused[2].Load() > 0 {
		t.Errorf("the survivors refused pushes during the failure")
	}
	t.Logf("failure detected by both survivors %s after the kill; all %d agents on survivors after %s", detected.Round(time.Millisecond), agentsN, rehomed.Round(time.Millisecond))
	waitFor(t, 60*time.Second, func() error {
		missing, example := 0, ""
		acceptedMu.Lock()
		defer acceptedMu.Unlock()
		byID := map[string]*clusterAgent{}
		for _, a := range agents {
			byID[a.id] = a
		}
		for data, dev := range accepted {
			a := byID[dev]
			a.mu.Lock()
			ok := a.got[data]
			a.mu.Unlock()
			if !ok {
				missing++
				example = data + " for " + dev
			}
		}
		if missing > 0 {
			return fmt.Errorf("%d of %d accepted pushes not delivered, e.g. %s", missing, len(accepted), example)
		}
		return nil
	})
	waitFor(t, 20*time.Second, func() error {
		if got, want := srvPorts(), wantPorts(survivors...); !slices.Equal(got, want) {
			return errors.New("dig SRV ports " + strings.Join(got, ",") + ", want " + strings.Join(want, ","))
		}
		return nil
	})
}

func portOf(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}
