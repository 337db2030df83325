package cluster

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"
)

// pushPull is a peer's push/pull state holding recs (and no State).
func pushPull(recs ...failedRecord) []byte {
	own, _ := json.Marshal(pushPullFailed{FailedNodes: recs})
	b, _ := json.Marshal([]json.RawMessage{own})
	return b
}

func quietNode(t *testing.T, state Replicated) *Cluster { return quietNodeB(t, state) }

func quietNodeB(t testing.TB, state Replicated) *Cluster {
	t.Helper()
	c, err := New(Config{Name: "node-0", Bind: "127.0.0.1:0", Meta: func() Meta { return Meta{} }, State: state,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestLeaveSeenAsFailureElsewhereNotLearned: a node that saw another
// leave in good order does not take a peer's word that it failed just
// then (that peer missed the leave announcement under load, and judged
// the same departure a failure): one node's mistake does not spread, and
// the mistaken node, told of the leave, drops its failure. A failure well
// after the leave (the node came back and died) is learned. Seen in CI
// (with an earlier exchange of failed nodes): node-0 listed node-3 as
// failed after node-3 left in good order, told so by a node that had
// judged the leave a failure.
func TestLeaveSeenAsFailureElsewhereNotLearned(t *testing.T) {
	c := quietNode(t, nil)
	left := time.Now().Add(-time.Minute)
	c.mu.Lock()
	c.cleared["node-3"] = left // seen to leave
	c.mu.Unlock()
	c.mergeRemoteState(pushPull(failedRecord{Name: "node-3", Addr: "127.0.0.4:7946", Since: left.Add(2 * time.Second)}))
	if f := c.Failed(); len(f) != 0 {
		t.Fatalf("told node-3 failed 2 s after it was seen to leave: Failed() = %+v, want none", f)
	}
	c.mergeRemoteState(pushPull(failedRecord{Name: "node-3", Addr: "127.0.0.4:7946", Since: left.Add(50 * time.Second)}))
	if f := c.Failed(); len(f) != 1 {
		t.Errorf("told node-3 failed 50 s after it left: Failed() = %+v, want it listed", f)
	}

	// The mistaken node: it lists node-5 failed; a peer saw node-5 leave
	// 2 s before.
	failed := time.Now().Add(-10 * time.Second)
	c.mu.Lock()
	c.failed["node-5"] = Failed{Member: Member{Name: "node-5"}, Since: failed}
	c.mu.Unlock()
	c.mergeRemoteState(pushPull(failedRecord{Name: "node-5", Cleared: failed.Add(-2 * time.Second)}))
	for _, f := range c.Failed() {
		if f.Name == "node-5" {
			t.Errorf("told node-5 left 2 s before it was judged failed here: still listed %+v", f)
		}
	}
}

// TestFailedRecordsConverge: whatever order the records of one name
// arrive in, every node ends with the same one, the latest (a clearing
// counted clearGrace later).
func TestFailedRecordsConverge(t *testing.T) {
	now := time.Now()
	recs := []failedRecord{
		{Name: "node-1", Since: now.Add(-100 * time.Second)},
		{Name: "node-1", Cleared: now.Add(-80 * time.Second)}, // counts as -50 s
		{Name: "node-1", Since: now.Add(-10 * time.Second)},   // the winner
		{Name: "node-1", Since: now.Add(-60 * time.Second)},
	}
	orders := [][]int{{0, 1, 2, 3}, {3, 2, 1, 0}, {1, 3, 0, 2}, {2, 0, 3, 1}}
	for _, order := range orders {
		c := quietNode(t, nil)
		for _, i := range order {
			c.mergeRemoteState(pushPull(recs[i]))
		}
		f := c.Failed()
		if len(f) != 1 || !f[0].Since.Equal(recs[2].Since) {
			t.Errorf("records in order %v: Failed() = %+v, want node-1 since %s", order, f, recs[2].Since)
		}
	}
	// A clearing within clearGrace after a failure wins over it.
	c := quietNode(t, nil)
	c.mergeRemoteState(pushPull(failedRecord{Name: "node-2", Since: now.Add(-20 * time.Second)}))
	c.mergeRemoteState(pushPull(failedRecord{Name: "node-2", Cleared: now.Add(-40 * time.Second)}))
	if f := c.Failed(); len(f) != 0 {
		t.Errorf("a clearing 20 s before the failure: Failed() = %+v, want none", f)
	}
	// Never itself.
	c.mergeRemoteState(pushPull(failedRecord{Name: "node-0", Since: now}))
	if f := c.Failed(); len(f) != 0 {
		t.Errorf("told it failed itself: Failed() = %+v", f)
	}
}

// stateRecorder is a Replicated that records what it is given.
type stateRecorder struct{ got [][]byte }

func (s *stateRecorder) LocalState() []byte { return []byte(`[{"fingerprint":"ab","version":1}]`) }
func (s *stateRecorder) Merge(b []byte) error {
	s.got = append(s.got, b)
	return nil
}

// TestPushPullCarriesStateAndFailedNodes: the push/pull state is the
// replicated state's array with one element of the cluster's own, which
// the other side takes out before State.Merge; a state from a node of an
// earlier version (the array alone) goes to State whole.
func TestPushPullCarriesStateAndFailedNodes(t *testing.T) {
	st := &stateRecorder{}
	c := quietNode(t, st)
	c.mu.Lock()
	c.failed["node-7"] = Failed{Member: Member{Name: "node-7"}, Since: time.Now()}
	c.mu.Unlock()
	var elems []json.RawMessage
	if err := json.Unmarshal(c.localState(), &elems); err != nil || len(elems) != 2 || string(elems[1]) != `{"fingerprint":"ab","version":1}` {
		t.Fatalf("local state %s (%v), want the failed nodes then the state's element", c.localState(), err)
	}

	other := quietNode(t, &stateRecorder{})
	other.cfg.Name = "node-9"
	other.mergeRemoteState(c.localState())
	if f := other.Failed(); len(f) != 1 || f[0].Name != "node-7" {
		t.Errorf("after a push/pull: Failed() = %+v, want node-7", f)
	}
	if got := other.cfg.State.(*stateRecorder).got; len(got) != 1 || string(got[0]) != `[{"fingerprint":"ab","version":1}]` {
		t.Errorf("State.Merge got %q, want the state's array without the failed nodes", got)
	}
	old := `[{"fingerprint":"cd","version":2}]` // a node of an earlier version
	other.mergeRemoteState([]byte(old))
	if got := other.cfg.State.(*stateRecorder).got; len(got) != 2 || string(got[1]) != old {
		t.Errorf("State.Merge got %q, want an earlier version's state whole", got)
	}
}

// TestLeaveAnnouncedAfterTheLeave: a node's announcement that it leaves
// can arrive after memberlist has passed on the leave itself, which
// without it is taken for a failure. Seen in CI, with nothing else
// running: node-0 listed node-3 failed after node-3 left in good order.
// A failure judged moments before the announcement is the leave; one
// judged long before stays.
func TestLeaveAnnouncedAfterTheLeave(t *testing.T) {
	c := quietNode(t, nil)
	c.mu.Lock()
	c.failed["node-3"] = Failed{Member: Member{Name: "node-3"}, Since: time.Now().Add(-200 * time.Millisecond)}
	c.failed["node-4"] = Failed{Member: Member{Name: "node-4"}, Since: time.Now().Add(-time.Minute)}
	c.mu.Unlock()
	d := delegate{c}
	d.NotifyMsg(append([]byte{kindLeaving}, "node-3"...))
	d.NotifyMsg(append([]byte{kindLeaving}, "node-4"...))
	if f := c.Failed(); len(f) != 1 || f[0].Name != "node-4" {
		t.Errorf("after both announced a leave: Failed() = %+v, want node-4 alone (failed a minute before)", f)
	}
}

// bigState is a Replicated of n allow-list-like entries.
type bigState struct{ b []byte }

func newBigState(n int) *bigState {
	var buf bytes.Buffer
	buf.WriteByte('[')
	for i := range n {
		if i > 0 {
			buf.WriteByte(',')
		}
		fmt.Fprintf(&buf, `{"fingerprint":"%064x","serial":"%032x","subject":"CN=pc-%d,O=dpgate","not_after":"2029-03-11T00:00:00Z","version":%d}`, i, i, i, i+1)
	}
	buf.WriteByte(']')
	return &bigState{buf.Bytes()}
}

func (s *bigState) LocalState() []byte { return s.b }
func (s *bigState) Merge([]byte) error { return nil }

// BenchmarkPushPullState: one push/pull's state, sent and taken, with
// an allow-list of 20,000 agent certificates (4 MB) and a failed node.
func BenchmarkPushPullState(b *testing.B) {
	st := newBigState(20000)
	c := quietNodeB(b, st)
	c.mu.Lock()
	c.failed["node-7"] = Failed{Member: Member{Name: "node-7"}, Since: time.Now()}
	c.mu.Unlock()
	other := quietNodeB(b, st)
	other.cfg.Name = "node-9"
	b.SetBytes(int64(len(st.b)))
	for b.Loop() {
		other.mergeRemoteState(c.localState())
	}
}
