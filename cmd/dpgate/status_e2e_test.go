//go:build linux

package main

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dpgate/dpgate/internal/testutil"
)

// TestStatusCommands: dpgate status, members and devices [ID] against a
// running gateway, its address from -c or DPGATE_ADDR.
func TestStatusCommands(t *testing.T) {
	dir := t.TempDir()
	adminAddr := testutil.FreePort(t)
	cfg := writeConfig(t, dir, adminAddr, "push:\n  listen: 127.0.0.1:0\n  auth: none\n  quic: false\n")
	s := startServe(t, nil, "-c", cfg)
	s.WaitLog(t, `msg="admin API listening"`)

	r := dpgate(t, nil, "status", "-c", cfg)
	for _, want := range []string{"node", "e2e", "certificate", "sha256//", "push", "0 sessions", "proxy", "off", "cluster"} {
		if r.Code != 0 || !strings.Contains(r.Stdout, want) {
			t.Fatalf("dpgate status: exit %d, no %q in\n%s%s", r.Code, want, r.Stdout, r.Stderr)
		}
	}
	// What waits in the queue is in the status, as on the console's overview.
	if r := dpgate(t, nil, "push", "-c", cfg, "pc-away", "job"); r.Code != 0 {
		t.Fatalf("push: %s", r.Stderr)
	}
	if r := dpgate(t, nil, "status", "-c", cfg); !strings.Contains(r.Stdout, "1 push queued for 1 device") {
		t.Errorf("dpgate status with one push queued for pc-away:\n%s%s", r.Stdout, r.Stderr)
	}
	if r := dpgate(t, nil, "members", "-c", cfg); r.Code != 1 || !strings.Contains(r.Stderr, "not in a cluster") {
		t.Errorf("dpgate members without a cluster: exit %d, %s", r.Code, r.Stderr)
	}
	// DPGATE_ADDR and DPGATE_TOKEN instead of -c: from another directory,
	// with the defaults' admin address wrong on purpose.
	token, _ := os.ReadFile(filepath.Join(dir, "data", "admin.token"))
	env := []string{"DPGATE_ADDR=" + adminAddr, "DPGATE_TOKEN=" + strings.TrimSpace(string(token))}
	if r := dpgate(t, env, "status", "--json"); r.Code != 0 || !strings.Contains(r.Stdout, `"node": "e2e"`) {
		t.Errorf("dpgate status with DPGATE_ADDR: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
	if r := dpgate(t, env, "devices"); r.Code != 0 || !strings.Contains(r.Stdout, "DEVICE") {
		t.Errorf("dpgate devices: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
	if r := dpgate(t, env, "devices", "no-such-device"); r.Code != 1 || !strings.Contains(r.Stderr, "unknown") {
		t.Errorf("dpgate devices no-such-device: exit %d, %s", r.Code, r.Stderr)
	}
}

// TestStatusOfAGatewayThatDoesNotAnswer: a gateway stopped with SIGSTOP
// (or hung, or swamped) accepts connections and answers nothing. Seen:
// dpgate status waited, silent, for the client's 3 minutes. It now gives
// up after DPGATE_TIMEOUT (30 s by default) and says what to look at.
func TestStatusOfAGatewayThatDoesNotAnswer(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0") // accepts (the kernel does), never answers
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cfg := writeConfig(t, t.TempDir(), ln.Addr().String(), "")
	for _, args := range [][]string{{"status", "-c", cfg}, {"members", "-c", cfg}, {"device", "list", "-c", cfg}, {"cert", "list", "-c", cfg}} {
		start := time.Now()
		r := dpgate(t, []string{"DPGATE_TOKEN=a-token-of-some-length", "DPGATE_TIMEOUT=250ms"}, args...)
		if r.Code != 1 || !strings.Contains(r.Stderr, "did not answer within 250ms") {
			t.Errorf("dpgate %s against a gateway that does not answer: exit %d after %s, stderr %q; want 1 and a word on the timeout",
				strings.Join(args[:len(args)-2], " "), r.Code, time.Since(start).Round(time.Millisecond), r.Stderr)
		}
	}
	if r := dpgate(t, []string{"DPGATE_TIMEOUT=soon"}, "status", "-c", cfg); r.Code != 2 || !strings.Contains(r.Stderr, "DPGATE_TIMEOUT") {
		t.Errorf("DPGATE_TIMEOUT=soon: exit %d, %q; want 2 naming DPGATE_TIMEOUT", r.Code, r.Stderr)
	}
}
