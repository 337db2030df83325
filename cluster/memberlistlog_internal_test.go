package cluster

import (
	"bytes"
	"log"
	"log/slog"
	"strings"
	"testing"

	"github.com/dpgate/dpgate/internal/ratelimit"
)

// TestMemberlistWarningsReachTheLog: memberlist's [WARN] and [ERR] lines
// were logged at debug level, so "UDP probes failed, network may be
// misconfigured" (a node bound to [::1] whose peers are on 127.0.0.1:
// gossip never passed) went unseen at the default level. They are now
// warnings, each kind once in 10 s with the number it stands for; the
// debug chatter stays at debug.
func TestMemberlistWarningsReachTheLog(t *testing.T) {
	var out bytes.Buffer
	l := log.New(&memberlistLog{l: slog.New(slog.NewTextHandler(&out, nil)), every: map[string]*ratelimit.Every{}}, "", 0)
	for range 5 {
		l.Print("[WARN] memberlist: Was able to connect to node-1 over TCP but UDP probes failed, network may be misconfigured")
		l.Print("[ERR] memberlist: Failed to send gossip to 127.0.0.1:7946: write udp [::1]:7946->127.0.0.1:7946: sendto: network is unreachable")
		l.Print("[DEBUG] memberlist: Stream connection from=[::1]:33716")
	}
	got := out.String()
	if n := strings.Count(got, "level=WARN"); n != 2 {
		t.Errorf("%d warnings, want 2 (one of each kind):\n%s", n, got)
	}
	if !strings.Contains(got, "network may be misconfigured") || !strings.Contains(got, "Failed to send gossip") {
		t.Errorf("the warnings do not say what memberlist said:\n%s", got)
	}
	if strings.Contains(got, "Stream connection") {
		t.Errorf("memberlist's debug line reached the info level:\n%s", got)
	}
}
