//go:build linux

package main

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dpgate/dpgate/internal/e2e"
	"github.com/dpgate/dpgate/internal/gateway"
	"github.com/dpgate/dpgate/internal/testutil"
	"github.com/dpgate/dpgate/push/client"
	"github.com/dpgate/dpgate/push/wire"
	"github.com/dpgate/dpgate/tlsconf"
)

// tokenAgent is an agent of TestClusterTokenAuth: where it is connected
// and how its last attempt failed.
type tokenAgent struct {
	id        string
	mu        sync.Mutex
	server    string
	lastErr   string
	redirects int
}

func (a *tokenAgent) state() (string, string, int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.server, a.lastErr, a.redirects
}

// TestClusterTokenAuth runs three "dpgate serve" processes with
// push.auth token and one shared push.token_key_file. 30 agents, each
// with a token from "dpgate token issue" on node 0 and only node 0 to
// start from, must all connect: those the balancer REDIRECTs authenticate
// on the other nodes. Node 0 is killed with SIGKILL and they fail over;
// restarted, it gets agents back by rebalancing. Then the key is rotated
// with an overlap: a new key added first (SIGHUP everywhere) signs new
// tokens while old ones still work; the old key retired, its tokens are
// refused and the sessions already up stay (an agent that rebalancing
// moves after that connects again with its old token and is refused).
func TestClusterTokenAuth(t *testing.T) {
	// Real processes that mostly wait: side by side with the other long ones.
	t.Parallel()
	const nodesN, agentsN = 3, 30 // enough that a node above its fair share after the restart has agents to hand over
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "push-token.key")
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	oldKey, newKey := b64("the site's first token key, 32 b"), b64("the site's next token key, 32 by")
	os.WriteFile(keyFile, []byte(oldKey+"\n"), 0o600)

	// Gossip ports are bound on port 0 and read from the logs. Node 0,
	// the seed, comes back on the addresses it had, as a restarted
	// service does, and joins node 1 (on a new gossip address the others
	// would keep its name from it for DeadNodeReclaimTime, 10 s).
	// Rebalancing sooner than the default 5 s: the test waits for it
	// after node 0's restart.
	const rebalanceAfter = time.Second
	var gossip []string
	var cfgs, pushes, pins []string
	srvs := make([]*server, nodesN)
	adminAddrs := make([]string, nodesN)
	gossipKey := gossipKeyFile(t)
	writeCfg := func(i int, pushAddr, bind, join string) string {
		cfg := filepath.Join(dir, fmt.Sprintf("node%d", i), "dpgate.yaml")
		if join != "" {
			join = fmt.Sprintf("  join: [%s]\n", join)
		}
		os.WriteFile(cfg, []byte(fmt.Sprintf("node:\n  name: node-%d\n  data_dir: data\nadmin:\n  listen: %s\npush:\n  listen: %s\n  auth: token\n  token_key_file: %s\n  quic: false\nwake:\n  listen: \"off\"\n  shutdown_listen: \"off\"\ncluster:\n  bind: %s\n  secret_key_file: %s\n  rebalance_after: %s\n%s",
			i, adminAddrs[i], pushAddr, keyFile, bind, gossipKey, rebalanceAfter, join)), 0o644)
		return cfg
	}
	for i := range nodesN {
		nd := filepath.Join(dir, fmt.Sprintf("node%d", i))
		os.MkdirAll(nd, 0o700)
		join := ""
		if i > 0 {
			join = gossip[0]
		}
		pushAddr := testutil.FreePort(t)
		adminAddrs[i] = testutil.FreePort(t)
		cfg := writeCfg(i, pushAddr, "127.0.0.1:0", join)
		srvs[i] = startServe(t, nil, "-c", cfg)
		srvs[i].WaitLog(t, `msg="push server listening"`)
		gossip = append(gossip, srvs[i].WaitLog(t, `msg="cluster started" addr=(\S+)`)[1])
		cfgs, pushes = append(cfgs, cfg), append(pushes, pushAddr)
		pins = append(pins, e2e.GatewayPin(t, bin, nd))
	}
	ctx := context.Background()
	sessions := func(i int) int {
		var st gateway.Status
		if err := apiClient(t, cfgs[i]).Do(ctx, "GET", "/v1/status", nil, &st); err != nil || st.Push == nil {
			return -1
		}
		return st.Push.Sessions
	}
	members := func(i int) int {
		var st gateway.Status
		if err := apiClient(t, cfgs[i]).Do(ctx, "GET", "/v1/status", nil, &st); err != nil {
			return -1
		}
		return len(st.Cluster)
	}
	waitFor(t, 30*time.Second, func() error {
		for i := range nodesN {
			if n := members(i); n != nodesN {
				return fmt.Errorf("node %d sees %d members", i, n)
			}
		}
		return nil
	})

	pinSet, _ := tlsconf.ParsePins(pins)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	runCtx, stop := context.WithCancel(ctx)
	var running sync.WaitGroup
	t.Cleanup(func() { stop(); running.Wait() })
	// runAgent runs an agent with the token, starting at server.
	runAgent := func(id, tok, server string) *tokenAgent {
		a := &tokenAgent{id: id}
		c, err := client.New(client.Config{Servers: []string{server}, DeviceID: id, Token: tok,
			TLS: tlsconf.PinnedClientConfig(pinSet, "dpgate"), MaxBackoff: time.Second, Logger: quiet,
			OnPush: func(wire.Message) {},
			OnEvent: func(e client.Event) {
				a.mu.Lock()
				defer a.mu.Unlock()
				switch e.Kind {
				case "connected":
					a.server, a.lastErr = e.Server, ""
				case "redirect":
					a.server = ""
					a.redirects++
				case "error", "replaced", "disconnected", "drain":
					a.server = ""
					if e.Err != nil {
						a.lastErr = e.Err.Error()
					}
				}
			}})
		if err != nil {
			t.Fatal(err)
		}
		running.Add(1)
		go func() { defer running.Done(); c.Run(runCtx) }()
		return a
	}
	// startAgent: a token from "dpgate token issue" on node 0, node 0 to start from.
	startAgent := func(id string) *tokenAgent {
		tok := strings.TrimSpace(dpgate(t, nil, "token", "issue", "-c", cfgs[0], "--days", "1", id).Stdout)
		return runAgent(id, tok, pushes[0])
	}
	var agents []*tokenAgent
	for i := range agentsN {
		agents = append(agents, startAgent(fmt.Sprintf("agent-%d", i)))
	}
	allOn := func(alive ...string) error {
		for _, a := range agents {
			if s, lastErr, _ := a.state(); !slices.Contains(alive, s) {
				return fmt.Errorf("%s is on %q, want one of %v (last error: %s)", a.id, s, alive, lastErr)
			}
		}
		return nil
	}

	// REDIRECT: all start at node 0; the balancer sends some elsewhere.
	waitFor(t, 60*time.Second, func() error { return allOn(pushes...) })
	redirected := 0
	for _, a := range agents {
		if s, _, n := a.state(); s != pushes[0] && n > 0 {
			redirected++
		}
	}
	t.Logf("sessions per node after the start: %d %d %d; %d agents redirected off node 0", sessions(0), sessions(1), sessions(2), redirected)
	if redirected == 0 {
		t.Fatal("no agent was redirected off node 0, so REDIRECT under token auth was not exercised")
	}

	// Failover: node 0 dies; its agents go to the nodes WELCOME named.
	srvs[0].Cmd.Process.Signal(syscall.SIGKILL)
	<-srvs[0].Done
	waitFor(t, 60*time.Second, func() error { return allOn(pushes[1], pushes[2]) })
	t.Logf("after kill -9 of node 0: sessions %d %d", sessions(1), sessions(2))

	// Rebalancing: node 0 back, the others hand agents over to it.
	writeCfg(0, pushes[0], gossip[0], gossip[1])
	srvs[0] = startServe(t, nil, "-c", cfgs[0])
	srvs[0].WaitLog(t, `msg="push server listening"`)
	waitFor(t, 90*time.Second, func() error {
		if n := sessions(0); n < 1 {
			return fmt.Errorf("node 0 holds %d agents after its restart (members seen by nodes 0, 1, 2: %d %d %d)", n, members(0), members(1), members(2))
		}
		return allOn(pushes...)
	})
	t.Logf("after node 0's restart: sessions %d %d %d", sessions(0), sessions(1), sessions(2))

	// Rotation, step 1: the new key first, the old one still held.
	os.WriteFile(keyFile, []byte(newKey+"\n"+oldKey+"\n"), 0o600)
	for _, s := range srvs {
		s.Cmd.Process.Signal(syscall.SIGHUP)
		s.WaitLog(t, `msg=reloaded .*token_keys=2`)
	}
	fresh := startAgent("agent-new") // its token is signed with the new key
	waitFor(t, 60*time.Second, func() error {
		if s, lastErr, _ := fresh.state(); !slices.Contains(pushes, s) {
			return fmt.Errorf("agent-new (new key) not connected: %s", lastErr)
		}
		return allOn(pushes...)
	})
	// Step 2: the old key retired. New sessions with its tokens fail;
	// the sessions up keep running. Rebalancing may still move an agent
	// (node 0 came back with fewer than its share): one moved after the
	// retirement connects again with its old token and is refused,
	// rightly. (The test waited for rebalancing to settle instead, and
	// failed when a node moved one more agent after its quiet spell.)
	movedBefore := map[*tokenAgent]int{}
	for _, a := range agents {
		_, _, movedBefore[a] = a.state()
	}
	os.WriteFile(keyFile, []byte(newKey+"\n"), 0o600)
	for _, s := range srvs {
		s.Cmd.Process.Signal(syscall.SIGHUP)
		s.WaitLog(t, `msg=reloaded .*token_keys=1`)
	}
	oldTok := wire.IssueToken([]byte("the site's first token key, 32 b"), "agent-late", time.Now().Add(time.Hour))
	late := runAgent("agent-late", oldTok, pushes[1])
	waitFor(t, 30*time.Second, func() error {
		if _, lastErr, _ := late.state(); !strings.Contains(lastErr, "code 3") {
			return fmt.Errorf("a token of the retired key: last error %q, want ERROR 3", lastErr)
		}
		return nil
	})
	if s, _, _ := late.state(); s != "" {
		t.Errorf("a token of the retired key connected to %s", s)
	}
	// A moved agent is between its REDIRECT and the refusal for a moment:
	// poll until each one is on a node or refused.
	stayed := 0
	waitFor(t, 30*time.Second, func() error {
		stayed = 0
		for _, a := range agents {
			s, lastErr, moves := a.state()
			switch {
			case slices.Contains(pushes, s):
				if moves == movedBefore[a] {
					stayed++
				}
			case moves == movedBefore[a]:
				return fmt.Errorf("%s, up before the retirement and not moved since, is on %q (last error: %s); want its session kept", a.id, s, lastErr)
			case !strings.Contains(lastErr, "code 3"):
				return fmt.Errorf("%s, moved after the retirement, is on %q with last error %q; want refused with ERROR 3", a.id, s, lastErr)
			}
		}
		return nil
	})
	t.Logf("%d of %d agents kept their sessions through the retirement", stayed, len(agents))
	if stayed < len(agents)/2 {
		t.Errorf("only %d of %d agents were left in place through the retirement: too few to show that sessions up are kept", stayed, len(agents))
	}
}
