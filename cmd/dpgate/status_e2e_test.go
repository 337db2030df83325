//go:build linux

package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestStatusCommands: dpgate status, members and devices [ID] against a
// running gateway, its address from -c or DPGATE_ADDR.
func TestStatusCommands(t *testing.T) {
	dir := t.TempDir()
	adminAddr := freePort(t)
	cfg := writeConfig(t, dir, adminAddr, "push:\n  listen: 127.0.0.1:0\n  auth: none\n  quic: false\n")
	s := startServe(t, nil, "-c", cfg)
	s.waitLog(t, `msg="admin API listening"`)

	r := dpgate(t, nil, "status", "-c", cfg)
	for _, want := range []string{"node", "e2e", "certificate", "sha256//", "push", "0 sessions", "proxy", "off", "cluster"} {
		if r.code != 0 || !strings.Contains(r.stdout, want) {
			t.Fatalf("dpgate status: exit %d, no %q in\n%s%s", r.code, want, r.stdout, r.stderr)
		}
	}
	// What waits in the queue is in the status, as on the console's overview.
	if r := dpgate(t, nil, "push", "-c", cfg, "pc-away", "job"); r.code != 0 {
		t.Fatalf("push: %s", r.stderr)
	}
	if r := dpgate(t, nil, "status", "-c", cfg); !strings.Contains(r.stdout, "1 pushes queued for 1 devices") {
		t.Errorf("dpgate status with one push queued for pc-away:\n%s%s", r.stdout, r.stderr)
	}
	if r := dpgate(t, nil, "members", "-c", cfg); r.code != 1 || !strings.Contains(r.stderr, "not in a cluster") {
		t.Errorf("dpgate members without a cluster: exit %d, %s", r.code, r.stderr)
	}
	// DPGATE_ADDR and DPGATE_TOKEN instead of -c: from another directory,
	// with the defaults' admin address wrong on purpose.
	token, _ := os.ReadFile(filepath.Join(dir, "data", "admin.token"))
	env := []string{"DPGATE_ADDR=" + adminAddr, "DPGATE_TOKEN=" + strings.TrimSpace(string(token))}
	if r := dpgate(t, env, "status", "--json"); r.code != 0 || !strings.Contains(r.stdout, `"node": "e2e"`) {
		t.Errorf("dpgate status with DPGATE_ADDR: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r := dpgate(t, env, "devices"); r.code != 0 || !strings.Contains(r.stdout, "DEVICE") {
		t.Errorf("dpgate devices: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r := dpgate(t, env, "devices", "no-such-device"); r.code != 1 || !strings.Contains(r.stderr, "unknown") {
		t.Errorf("dpgate devices no-such-device: exit %d, %s", r.code, r.stderr)
	}
}
