//go:build linux

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dpgate/dpgate/internal/e2e"
	"github.com/dpgate/dpgate/internal/gateway"
	"github.com/dpgate/dpgate/internal/testutil"
)

// TestWakeUpEndToEnd: an agent whose gateway died waits a long reconnect
// backoff; the gateway comes back and a push for the device is accepted;
// the gateway sends the signed wake-up datagram to the agent's UDP port;
// the agent verifies it, connects at once and gets the push. When the
// agent exits, its signed shutdown notice marks the device as shut down.
func TestWakeUpEndToEnd(t *testing.T) {
	dir := t.TempDir()
	pushAddr, adminAddr := testutil.FreePort(t), testutil.FreePort(t)
	agentPort, shutdownAddr := portOf(testutil.FreePort(t)), testutil.FreePort(t)
	cfg := writeConfig(t, dir, adminAddr, fmt.Sprintf("push:\n  listen: %s\n  auth: none\n  quic: false\nwake:\n  listen: 127.0.0.1:0\n  agent_port: %s\n  shutdown_listen: %s\n",
		pushAddr, agentPort, shutdownAddr))
	s := startServe(t, nil, "-c", cfg)
	s.WaitLog(t, `msg="push server listening"`)
	pin := e2e.GatewayPin(t, bin, dir)
	key := strings.TrimSpace(dpgate(t, nil, "wake", "key", "-c", cfg).Stdout)
	secret := strings.TrimSpace(dpgate(t, nil, "wake", "key", "--device", "pc-wake", "-c", cfg).Stdout)
	if !strings.HasPrefix(key, "ed25519:") || !strings.HasPrefix(secret, "hmac:") {
		t.Fatalf("wake key printed %q and %q", key, secret)
	}

	// The agent: a first reconnect wait of 30-90 s, so only a wake-up can
	// bring it back within the test's time.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// The secret in a file, as the agent's help says (on the command
	// line every local user could read it).
	secretFile := filepath.Join(t.TempDir(), "pc-wake.secret")
	if err := os.WriteFile(secretFile, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ag := exec.CommandContext(ctx, bin, "agent", "--server", pushAddr, "--pin", pin, "--device", "pc-wake",
		"--wake-key", key, "--wake-listen", "127.0.0.1:"+agentPort, "--wake-secret-file", secretFile, "--notify", shutdownAddr,
		"--min-backoff", "30s", "--max-backoff", "10m")
	ag.Env = os.Environ()
	stderr, lines := e2e.StartAgentProcess(t, ag)
	waitStderr := func(what string) {
		t.Helper()
		waitFor(t, 30*time.Second, func() error {
			if !strings.Contains(stderr.String(), what) {
				return fmt.Errorf("agent has not printed %q yet; stderr:\n%s", what, stderr.String())
			}
			return nil
		})
	}
	waitStderr("connected " + pushAddr)
	// A push delivered before the crash: the store has then committed the
	// device's record (address from HELLO), written before the push.
	if r := dpgate(t, nil, "push", "-c", cfg, "--wait", "10s", "pc-wake", "first"); r.Code != 0 || !strings.Contains(r.Stdout, "delivered") {
		t.Fatalf("first push: exit %d: %s %s", r.Code, r.Stdout, r.Stderr)
	}
	<-lines

	// The gateway dies; the agent starts its long wait. The gateway comes
	// back with the device in its registry (address, from HELLO).
	s.Cmd.Process.Signal(syscall.SIGKILL)
	<-s.Done
	waitStderr("disconnected")
	s2 := startServe(t, nil, "-c", cfg)
	s2.WaitLog(t, `msg="push server listening"`)

	start := time.Now()
	r := dpgate(t, nil, "push", "-c", cfg, "--json", "pc-wake", "wake and sync")
	if r.Code != 0 {
		t.Fatalf("push: exit %d: %s", r.Code, r.Stderr)
	}
	select {
	case line := <-lines:
		var m struct{ Data string }
		if err := json.Unmarshal([]byte(line), &m); err != nil || m.Data != "wake and sync" {
			t.Fatalf("agent printed %q", line)
		}
		t.Logf("push accepted -> wake-up datagram -> agent connected -> push delivered: %s", time.Since(start).Round(time.Millisecond))
	case <-time.After(25 * time.Second):
		var d any
		apiClient(t, cfg).Do(context.Background(), "GET", "/v1/devices/pc-wake", nil, &d)
		t.Logf("device: %+v", d)
		t.Fatalf("the push did not arrive within 25 s (the agent's own retry comes after 30 s or more); agent:\n%s\ngateway:\n%s", stderr.String(), s2.Log())
	}
	if !strings.Contains(stderr.String(), "dpgate agent: wake ") {
		t.Errorf("the agent did not report a wake-up:\n%s", stderr.String())
	}
	// The wake-up is recorded once all its attempts are made (the datagram
	// first, then Wake-on-LAN packets), which the agent's answer to the
	// datagram may beat (seen once in CI: LastWake still nil).
	api := apiClient(t, cfg)
	var d gateway.DeviceReply
	waitFor(t, 10*time.Second, func() error {
		if err := api.Do(context.Background(), "GET", "/v1/devices/pc-wake", nil, &d); err != nil || d.LastWake == nil {
			return fmt.Errorf("no wake-up recorded yet (%v)", err)
		}
		return nil
	})
	if d.LastWake.Reason != "push" || !d.LastWake.Sent() || d.LastWake.Attempts[0].Via != "datagram" {
		t.Errorf("last wake-up %+v, want a datagram sent for the push", d.LastWake)
	}

	// A forged wake-up is refused by the agent.
	forged, _ := net.Dial("udp", "127.0.0.1:"+agentPort)
	forged.Write([]byte("DPWK\x01\x01\x01\x07pc-wake" + strings.Repeat("x", 80)))
	forged.Close()
	waitStderr("rejected (signature)")

	// The agent exits: its shutdown notice reaches the gateway.
	ag.Process.Signal(syscall.SIGTERM)
	waitStderr("shutdown notice sent")
	waitFor(t, 10*time.Second, func() error {
		var d gateway.DeviceReply
		if err := api.Do(context.Background(), "GET", "/v1/devices/pc-wake", nil, &d); err != nil {
			return err
		}
		if d.ShutDownAt == nil {
			return fmt.Errorf("device not marked as shut down: %+v", d.DeviceStatus)
		}
		return nil
	})
}
