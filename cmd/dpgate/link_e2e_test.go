//go:build linux

package main

import (
	"bufio"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dpgate/dpgate/internal/testutil"
)

// TestProbeAgainstReflect: dpgate probe against dpgate reflect, within
// the limits (exit 0) and with a delay limit no link meets (exit 1).
func TestProbeAgainstReflect(t *testing.T) {
	// Real processes that mostly wait: side by side with the other long ones.
	t.Parallel()
	r := exec.Command(bin, "reflect", "--listen", "127.0.0.1:0") // the port it got is in its first line
	r.Env = os.Environ()
	stderr, _ := r.StderrPipe()
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { r.Process.Signal(syscall.SIGTERM); r.Wait() }()
	// Probe only once the socket is bound: a probe sent earlier is lost
	// (the port answers ICMP unreachable) and would count against the link.
	listening := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "dpgate reflect: answering STAMP on "); ok {
				listening <- a
			}
		}
	}()
	var addr string
	select {
	case addr = <-listening:
	case <-time.After(30 * time.Second):
		t.Fatal("dpgate reflect did not report its socket within 30 s")
	}
	res := dpgate(t, nil, "probe", addr, "--count", "50", "--interval", "5ms", "--json")
	if res.Code != 0 {
		t.Fatalf("probe exit %d: %s %s", res.Code, res.Stdout, res.Stderr)
	}
	var out struct {
		Verdict string
		Stats   struct {
			Sent, Received int
			RTTP50         float64 `json:"rtt_p50_ms"`
			ReflectorTTL   int     `json:"reflector_ttl"`
		}
	}
	if err := json.Unmarshal([]byte(res.Stdout), &out); err != nil || out.Verdict != "ok" || out.Stats.Sent != 50 || out.Stats.Received != 50 || out.Stats.RTTP50 <= 0 || out.Stats.ReflectorTTL <= 0 {
		t.Errorf("probe --json: %s (%v)", res.Stdout, err)
	}
	if res := dpgate(t, nil, "probe", addr, "--count", "20", "--interval", "5ms", "--delay", "1us"); res.Code != 1 {
		t.Errorf("probe with an impossible delay limit: exit %d, want 1\n%s", res.Code, res.Stdout)
	}
	// Nothing listening: no round-trip figures (they read 0.00ms, as if
	// the link were instant), and a word on what to check.
	nobody := testutil.FreePort(t)
	if res := dpgate(t, nil, "probe", nobody, "--count", "3", "--interval", "5ms"); res.Code != 1 || !strings.Contains(res.Stdout, "no probe was answered") || strings.Contains(res.Stdout, "0.00ms") {
		t.Errorf("probe with no reflector: exit %d, want 1 and no round-trip figures\n%s", res.Code, res.Stdout)
	}
}

// TestProbeWithNothingAnswering: with no reply at all, which way the
// probes were lost is unknown. Seen: "loss 100.00% round trip, 100.00%
// out, 100.00% back", claiming both directions lost; it says so now, and
// the verdict (out of limits, on the round trip) is unchanged.
func TestProbeWithNothingAnswering(t *testing.T) {
	t.Parallel()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0") // bound, never answers
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	r := dpgate(t, nil, "probe", pc.LocalAddr().String(), "--count", "3", "--interval", "50ms")
	if r.Code != 1 || !strings.Contains(r.Stdout, "loss 100.00% round trip, out and back unknown (nothing came back)") || !strings.Contains(r.Stdout, "verdict: out-of-limits") {
		t.Errorf("probe of a silent address: exit %d\n%s%s\nwant the direction unknown and the link out of limits", r.Code, r.Stdout, r.Stderr)
	}
}
