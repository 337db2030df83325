package gateway

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/dpgate/dpgate/push"
)

// TestMergeDevices: one entry a device, from what each node says of it.
func TestMergeDevices(t *testing.T) {
	t0 := time.Date(2026, 12, 7, 9, 0, 0, 0, time.UTC)
	got := mergeDevices(map[string][]push.DeviceStatus{
		"node-1": {
			{ID: "pc-a", Queued: 2}, // an owner's copies
			{ID: "pc-b", LastSeen: t0, RemoteAddr: "10.0.0.2:1", Queued: 1}, // seen here first
			{ID: "pc-c", Queued: 1}, // queued only
		},
		"node-2": {
			{ID: "pc-a", Connected: true, Transport: "tls", LastSeen: t0, Queued: 0}, // the holder
			{ID: "pc-b", LastSeen: t0.Add(time.Minute), RemoteAddr: "10.0.0.2:2"},    // seen here last
		},
		"node-3": {
			{ID: "pc-a", Queued: 3}, // the other owner, one more copy not yet removed
			{ID: "pc-c", Queued: 1},
		},
	})
	want := []struct {
		id, node, addr string
		connected      bool
		queued         int
	}{
		{"pc-a", "node-2", "", true, 3},
		{"pc-b", "node-2", "10.0.0.2:2", false, 1},
		{"pc-c", "", "", false, 1},
	}
	if len(got) != len(want) {
		t.Fatalf("%d entries, want %d: %+v", len(got), len(want), got)
	}
	for i, w := range want {
		g := got[i]
		if g.ID != w.id || g.Node != w.node || g.RemoteAddr != w.addr || g.Connected != w.connected || g.Queued != w.queued {
			t.Errorf("entry %d: %s on %q at %q connected %v queued %d; want %+v", i, g.ID, g.Node, g.RemoteAddr, g.Connected, g.Queued, w)
		}
	}
}

// BenchmarkDeviceListMerge: what the node asked does with the answers of
// a cluster of three, 15,000 devices each connected to one node and
// queued on none: decode two nodes' lists, merge all three.
func BenchmarkDeviceListMerge(b *testing.B) {
	const n = 15000
	t0 := time.Date(2026, 12, 7, 9, 0, 0, 0, time.UTC)
	lists := make([][]push.DeviceStatus, 3)
	for i := range n {
		d := push.DeviceStatus{ID: fmt.Sprintf("agent-%05d", i), Connected: true, Transport: "tls",
			RemoteAddr: "10.1.2.3:51477", Since: &t0, LastSeen: t0, LocalAddr: "10.1.2.3"}
		lists[i%3] = append(lists[i%3], d)
	}
	raw := make([][]byte, 2)
	for i := range raw {
		raw[i], _ = json.Marshal(lists[i+1])
	}
	for b.Loop() {
		byNode := map[string][]push.DeviceStatus{"node-0": lists[0]}
		for i, r := range raw {
			var ds []push.DeviceStatus
			if err := json.Unmarshal(r, &ds); err != nil {
				b.Fatal(err)
			}
			byNode[fmt.Sprintf("node-%d", i+1)] = ds
		}
		if got := mergeDevices(byNode); len(got) != n {
			b.Fatalf("%d entries, want %d", len(got), n)
		}
	}
	b.ReportMetric(float64(len(raw[0])+len(raw[1])), "bytes-received/op")
}
