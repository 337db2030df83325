package gateway

import (
	"log/slog"
	"os"
	"strings"
	"testing"

	"github.com/dpgate/dpgate/internal/testutil"
)

func TestConnectionLimits(t *testing.T) {
	for _, c := range []struct {
		name                      string
		files, push, proxy        int
		pushOn, proxyOn           bool
		wantPush, wantProxy, need int
		lowered                   bool
	}{
		{"unknown limit", 0, 0, 0, true, true, 100000, 20000, 140256, false},
		{"systemd's", 1 << 20, 0, 0, true, true, 100000, 20000, 140256, false},
		{"fits exactly", 1256, 800, 100, true, true, 800, 100, 1256, false},
		// 19,744 files for 140,000 wanted: each limit at 14.1 %.
		{"this machine, both on", 20000, 0, 0, true, true, 14102, 2820, 140256, true},
		{"push alone", 20000, 0, 0, true, false, 19744, 0, 100256, true},
		{"proxy alone", 20000, 0, 0, false, true, 0, 9872, 40256, true},
		{"no room at all", 100, 5000, 0, true, false, 1, 0, 5256, true},
	} {
		l := connectionLimits(c.files, c.push, c.proxy, c.pushOn, c.proxyOn)
		if l.push != c.wantPush || l.proxy != c.wantProxy || l.need != c.need || l.lowered != c.lowered {
			t.Errorf("%s: push %d proxy %d need %d lowered %v; want %d %d %d %v", c.name, l.push, l.proxy, l.need, l.lowered, c.wantPush, c.wantProxy, c.need, c.lowered)
		}
		if files := l.push + 2*l.proxy + reservedFiles; c.files > reservedFiles && files > c.files {
			t.Errorf("%s: %d files needed for the limits found, more than the %d there are", c.name, files, c.files)
		}
	}
}

// TestConnectionLimitsFollowReload: the limits in force are fitted again
// at a reload, from the new push.max_connections.
func TestConnectionLimitsFollowReload(t *testing.T) {
	t.Parallel()
	var log testutil.Buffer
	g, _, _ := newTestGatewayWith(t, "", Options{FileLimit: 1000, Logger: log.Logger(slog.LevelInfo)})
	if got := g.push.MaxConnections(); got != 744 {
		t.Errorf("push sessions at most %d with 1,000 files, want 744 (256 kept)", got)
	}
	if !strings.Contains(log.String(), "open files: the limit cannot hold") {
		t.Errorf("no warning at start; log:\n%s", log.String())
	}
	if st := g.status(); st.OpenFilesLimit != 1000 || st.Push.MaxConnections != 744 {
		t.Errorf("status: open files limit %d, push max %d; want 1000, 744", st.OpenFilesLimit, st.Push.MaxConnections)
	}
	// The limit in force is a series too, for an alert on a node nearly
	// full (DpgateConnectionsNearLimit).
	if n := testutil.Metric(t, g.Telemetry().Registry, "dpgate_push_max_connections"); n != 744 {
		t.Errorf("dpgate_push_max_connections %v, want 744", n)
	}
	body, err := os.ReadFile(g.cfg.File())
	if err != nil {
		t.Fatal(err)
	}
	next := strings.Replace(string(body), "push:\n  listen: 127.0.0.1:0\n", "push:\n  listen: 127.0.0.1:0\n  max_connections: 5000\n", 1)
	os.WriteFile(g.cfg.File(), []byte(next), 0o644)
	if err := g.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := g.push.MaxConnections(); got != 744 {
		t.Errorf("after a reload to 5,000: at most %d, want 744 again", got)
	}
	if n := strings.Count(log.String(), "open files: the limit cannot hold"); n != 2 {
		t.Errorf("%d warnings, want one at start and one at the reload", n)
	}
}
