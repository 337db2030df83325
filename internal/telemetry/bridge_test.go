package telemetry

import (
	"math"
	"strings"
	"testing"

	metrics "github.com/hashicorp/go-metrics"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestBridge: memberlist's go-metrics calls land in the declared series,
// timers converted from milliseconds to seconds, labels kept; a key the
// bridge does not know is remembered, not exported.
func TestBridge(t *testing.T) {
	reg := prometheus.NewRegistry()
	b := newBridge(reg)
	b.IncrCounterWithLabels([]string{"memberlist", "msg", "alive"}, 1, nil)
	b.IncrCounterWithLabels([]string{"memberlist", "msg", "alive"}, 2, nil)
	b.AddSampleWithLabels([]string{"memberlist", "gossip"}, 2.5, nil) // ms
	b.SetGaugeWithLabels([]string{"memberlist", "node", "instances"}, 3, []metrics.Label{{Name: "node_state", Value: "alive"}})
	b.IncrCounter([]string{"memberlist", "something", "new"}, 1)

	if v := testutil.ToFloat64(b.counters["memberlist.msg.alive"]); v != 3 {
		t.Errorf("dpgate_memberlist_msg_alive_total = %v, want 3", v)
	}
	if v := testutil.ToFloat64(b.gauges["memberlist.node.instances"].WithLabelValues("alive")); v != 3 {
		t.Errorf(`dpgate_memberlist_node_instances{node_state="alive"} = %v, want 3`, v)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "dpgate_memberlist_gossip_duration_seconds" {
			h := mf.GetMetric()[0].GetHistogram()
			if h.GetSampleCount() != 1 || math.Abs(h.GetSampleSum()-0.0025) > 1e-9 {
				t.Errorf("gossip duration: %d samples, sum %v s; want 1 and 0.0025", h.GetSampleCount(), h.GetSampleSum())
			}
		}
		if strings.Contains(mf.GetName(), "something") {
			t.Errorf("an unknown key was exported as %s", mf.GetName())
		}
	}
	tel := &Telemetry{Registry: reg, bridge: b}
	if u := tel.Unmapped(); len(u) != 1 || u[0] != "memberlist.something.new" {
		t.Errorf("unmapped %v, want [memberlist.something.new]", u)
	}
}
