package cluster

import (
	"testing"
	"time"

	"github.com/dpgate/dpgate/internal/testutil"
	"github.com/dpgate/dpgate/push/queue"
	"github.com/dpgate/dpgate/push/wire"
)

// ackingLocal is a push server whose agent acknowledges each push while
// its commit is under way: the session is woken by the commit, so a
// quick agent's ACK can reach Acked before Insert has returned.
type ackingLocal struct {
	memLocal
	r *Router
}

func (l *ackingLocal) Insert(items []queue.Item) ([]queue.Item, error) {
	added, err := l.memLocal.Insert(items)
	for _, it := range added {
		l.r.Acked(it.Device, it.ID)
	}
	return added, err
}

// TestOriginKnownBeforeTheCommit: a copy another node sends (it accepted
// the push, and waits with ?wait= for its ACK) is acknowledged at once
// by the agent here. The accepting node was recorded only after the
// commit, so an ACK that came during it was told to the owners but not
// to the accepting node, whose ?wait= then ran out with "queued" though
// the agent had the push (TestSharedCertificateRouting, once, under
// load), and the record stayed behind. The origin is now recorded
// first.
func TestOriginKnownBeforeTheCommit(t *testing.T) {
	id := testIdentity(t, "solo")
	c, err := New(Config{Name: "solo", Bind: "127.0.0.1:0", Logger: testutil.Quiet(),
		Meta: func() Meta { return Meta{Push: "127.0.0.1:1", Pin: id.Pin()} }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	local := &ackingLocal{memLocal: memLocal{q: map[string][]wire.Message{}}}
	r, err := NewRouter(RouterConfig{Cluster: c, Local: local, Identity: id, Logger: testutil.Quiet()})
	if err != nil {
		t.Fatal(err)
	}
	local.r = r
	t.Cleanup(r.Close)
	it := queue.Item{Device: "pc-1", Message: wire.Message{ID: [16]byte{1}, Expiry: time.Now().Add(time.Hour).UnixMilli(), Payload: []byte("x")}}
	if err := r.stored("owner", []wireItem{{Item: it, Origin: "accepting-node"}}); err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	_, told := r.out["accepting-node"]
	_, kept := r.origins[it.ID]
	r.mu.Unlock()
	if !told || kept {
		t.Errorf("ACK during the commit: told to the accepting node %v, its record left behind %v; want told and none left", told, kept)
	}
}
