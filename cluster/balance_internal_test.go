package cluster

import (
	"testing"
	"time"
)

// TestStaleGrowthNotExtrapolated: a node's figure is extrapolated at its
// last growth only while a newer figure could still be on its way; a node
// that stopped gaining agents gossips no new figure (its metadata is
// unchanged), so its old growth must not count for ever. Before, the
// estimate stayed growth x lag above the figure: after a ramp, the other
// nodes saw a phantom load on the least loaded node and never moved
// agents to it (TestAgentsSpreadOverNodes stuck at 532 441 527 for 2
// minutes).
func TestStaleGrowthNotExtrapolated(t *testing.T) {
	c := &Cluster{cfg: Config{RefreshInterval: time.Second}, redirects: map[string][]time.Time{},
		metaAt: map[string]time.Time{}, growth: map[string]float64{"n1": 300}}
	for _, tc := range []struct {
		age     time.Duration
		min, mx int
	}{
		{5 * time.Second, 441, 441},        // long stopped: the figure itself
		{500 * time.Millisecond, 541, 600}, // fresh, still growing: about 441 + 300 x 0.5
	} {
		m := Member{Name: "n1", Meta: Meta{Conns: 441, At: time.Now().Add(-tc.age).UnixMilli()}}
		if got := c.load(m); got < tc.min || got > tc.mx {
			t.Errorf("figure 441 taken %v ago, growth 300/s: load %d, want %d..%d", tc.age, got, tc.min, tc.mx)
		}
	}
}
