package cluster

import (
	"bytes"
	"slices"
	"testing"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dpgate/dpgate/internal/testutil"
)

type recordState struct{ merged [][]byte }

func (s *recordState) LocalState() []byte { return nil }
func (s *recordState) Merge(b []byte) error {
	s.merged = append(s.merged, b)
	return nil
}

// TestMessageKinds: what Broadcast and BroadcastState send arrives at
// OnMessage and State.Merge by its kind byte, whatever the payload's first
// byte; the bare JSON that nodes of earlier versions send (an array for
// a State change, an object otherwise) still arrives where it did.
func TestMessageKinds(t *testing.T) {
	st := &recordState{}
	var msgs [][]byte
	c := &Cluster{cfg: Config{State: st, OnMessage: func(b []byte) { msgs = append(msgs, b) }}, log: testutil.Quiet(), m: newClusterMetrics(prometheus.NewRegistry()),
		queue: &memberlist.TransmitLimitedQueue{RetransmitMult: 1, NumNodes: func() int { return 2 }}}
	d := delegate{c}

	// A message that starts like a State change, and a change that does not.
	c.broadcast(kindMessage, []byte(`["not a state change"]`))
	c.broadcast(kindState, []byte(`{"v":1}`))
	sent := c.queue.GetBroadcasts(0, 1400)
	if len(sent) != 2 {
		t.Fatalf("queued %d broadcasts, want 2", len(sent))
	}
	for _, b := range sent {
		d.NotifyMsg(b)
	}
	d.NotifyMsg([]byte(`[{"fp":"old"}]`))         // an earlier version's State change
	d.NotifyMsg([]byte(`{"shutdown":"dev-old"}`)) // and its other message
	d.NotifyMsg(nil)

	wantMsgs := [][]byte{[]byte(`["not a state change"]`), []byte(`{"shutdown":"dev-old"}`)}
	wantMerged := [][]byte{[]byte(`{"v":1}`), []byte(`[{"fp":"old"}]`)}
	if !equal(msgs, wantMsgs) {
		t.Errorf("OnMessage got %q, want %q", msgs, wantMsgs)
	}
	if !equal(st.merged, wantMerged) {
		t.Errorf("Merge got %q, want %q", st.merged, wantMerged)
	}
}

// equal compares in any order: the queue hands out newest first.
func equal(a, b [][]byte) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.SortFunc(a, bytes.Compare)
	slices.SortFunc(b, bytes.Compare)
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !bytes.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}
