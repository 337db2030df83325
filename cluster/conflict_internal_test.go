package cluster

import (
	"testing"
	"time"

	"github.com/dpgate/dpgate/internal/testutil"
)

// TestConflictReportedOnlyWhenItLasts: a node moved to a new address
// conflicts with its old entry for the 10-20 s until that is declared
// dead; that is not reported. A claim that goes on past ConflictAfter
// is, once, and one not seen again for conflictGap is over.
func TestConflictReportedOnlyWhenItLasts(t *testing.T) {
	var log testutil.Buffer
	c := &Cluster{cfg: Config{Name: "n1", ConflictAfter: time.Minute}, log: log.Logger(0), conflicts: map[string]*Conflict{}}
	t0 := time.Now().Add(-time.Hour)
	for s := 0; s <= 20; s++ { // a move: 20 s of conflicts, then none
		c.conflictSeen("n2", "10.0.0.9:7946", "10.0.0.2:7946", t0.Add(time.Duration(s)*time.Second))
	}
	if cs := c.Conflicts(); len(cs) != 0 || log.Count("level=ERROR") != 0 {
		t.Fatalf("after a 20 s conflict: %+v reported, %d errors logged; want none", cs, log.Count("level=ERROR"))
	}
	// Long after: a twin, every second for two minutes, up to now.
	now := time.Now()
	for s := 120; s >= 0; s-- {
		c.conflictSeen("n1", "10.0.0.7:7946", "10.0.0.1:7946", now.Add(-time.Duration(s)*time.Second))
	}
	cs := c.Conflicts()
	if len(cs) != 1 || cs[0].Name != "n1" || cs[0].Addr != "10.0.0.7:7946" || cs[0].Known != "10.0.0.1:7946" {
		t.Fatalf("conflicts %+v, want n1 claimed from 10.0.0.7:7946", cs)
	}
	if n := log.Count("another node uses this node's name"); n != 1 {
		t.Errorf("%d errors logged over two minutes, want 1:\n%s", n, log.String())
	}
	// The stale first one is gone.
	if _, ok := c.conflicts["n2 10.0.0.9:7946"]; ok {
		t.Errorf("the conflict of an hour ago is still kept")
	}
}
