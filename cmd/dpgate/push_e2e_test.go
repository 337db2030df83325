package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dpgate/dpgate/internal/gateway"
)

// TestPushSurvivesKill9 runs the real binaries: pushes are accepted by a
// gateway with no agent connected, the gateway is killed with SIGKILL and
// started again, and then "dpgate agent" receives every one of them, in
// order, exactly as accepted.
func TestPushSurvivesKill9(t *testing.T) {
	dir := t.TempDir()
	pushAddr, adminAddr := freePort(t), freePort(t)
	cfg := writeConfig(t, dir, adminAddr, fmt.Sprintf("push:\n  listen: %s\n  auth: none\n  quic: false\n", pushAddr))
	s := startServe(t, nil, "-c", cfg)
	s.waitLog(t, `msg="push server listening" addr=`+pushAddr)

	const n = 25
	var accepted []gateway.PushReply
	for i := range n {
		r := dpgate(t, nil, "push", "-c", cfg, "--json", "device-1", fmt.Sprintf("job %d", i))
		if r.code != 0 {
			t.Fatalf("push %d: exit %d: %s", i, r.code, r.stderr)
		}
		var reply gateway.PushReply
		if err := json.Unmarshal([]byte(r.stdout), &reply); err != nil || reply.Status != "queued" {
			t.Fatalf("push %d: reply %q, %v; want queued", i, r.stdout, err)
		}
		accepted = append(accepted, reply)
	}
	s.cmd.Process.Signal(syscall.SIGKILL)
	<-s.done

	s2 := startServe(t, nil, "-c", cfg)
	s2.waitLog(t, `msg="push server listening"`)
	pin := strings.TrimSpace(dpgate(t, nil, "cert", "pin", filepath.Join(dir, "data", "gateway.pem")).stdout)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ag := exec.CommandContext(ctx, bin, "agent", "--server", pushAddr, "--pin", pin, "--device", "device-1")
	ag.Env = os.Environ()
	out, _ := ag.StdoutPipe()
	if err := ag.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { ag.Process.Signal(syscall.SIGTERM); ag.Wait() }()
	sc := bufio.NewScanner(out)
	for i := range n {
		if !sc.Scan() {
			t.Fatalf("agent printed %d pushes, want %d", i, n)
		}
		var line struct {
			Seq  uint64 `json:"seq"`
			ID   string `json:"id"`
			Data string `json:"data"`
		}
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Fatalf("agent line %q: %v", sc.Text(), err)
		}
		want := accepted[i]
		if line.ID != want.ID || line.Seq != want.Seq || line.Data != fmt.Sprintf("job %d", i) {
			t.Fatalf("push %d: agent got %+v, want id %s seq %d", i, line, want.ID, want.Seq)
		}
	}
	// Acknowledged: nothing stays queued.
	waitFor(t, 20*time.Second, func() error {
		var d struct{ Queued int }
		if err := apiClient(t, cfg).Do(context.Background(), "GET", "/v1/devices/device-1", nil, &d); err != nil {
			return err
		}
		if d.Queued != 0 {
			return fmt.Errorf("%d still queued", d.Queued)
		}
		return nil
	})
}
