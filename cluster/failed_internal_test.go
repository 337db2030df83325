package cluster

import (
	"encoding/json"
	"io"
	"log/slog"
	"testing"
	"time"
)

// TestLeaveSeenAsFailureElsewhereNotLearned: a node that saw another
// leave in good order does not take a peer's word that it failed just
// then (that peer missed the leave announcement under load, and judged
// the same departure a failure): one node's mistake does not spread. A
// failure well after the leave (the node came back and died) is learned.
// Seen in CI: node-0 listed node-3 as failed after node-3 left in good
// order, told so at a join by a node that had judged the leave a failure.
func TestLeaveSeenAsFailureElsewhereNotLearned(t *testing.T) {
	c, err := New(Config{Name: "node-0", Bind: "127.0.0.1:0", Meta: func() Meta { return Meta{} },
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	left := time.Now().Add(-time.Minute)
	c.mu.Lock()
	c.cleared["node-3"] = left // seen to leave
	c.mu.Unlock()
	tell := func(since time.Time) {
		b, _ := json.Marshal([]failedRecord{{Name: "node-3", Addr: "127.0.0.4:7946", Since: since}})
		c.toldFailed(b)
	}
	tell(left.Add(2 * time.Second)) // the same departure, judged a failure by the peer
	if f := c.Failed(); len(f) != 0 {
		t.Fatalf("told node-3 failed 2 s after it was seen to leave: Failed() = %+v, want none", f)
	}
	tell(left.Add(50 * time.Second)) // back and dead since
	if f := c.Failed(); len(f) != 1 {
		t.Errorf("told node-3 failed 50 s after it left: Failed() = %+v, want it listed", f)
	}
}
