package cluster_test

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/dpgate/dpgate/cluster"
	"github.com/dpgate/dpgate/push/queue"
	"github.com/dpgate/dpgate/push/wire"
	"github.com/dpgate/dpgate/tlsconf"
)

// ackedLocal is a push server whose device acknowledges every push while
// its commit is under way, as when another owner's copy reached the
// holder first: the store skips them and returns none.
type ackedLocal struct{ inserts int }

func (l *ackedLocal) Insert([]queue.Item) ([]queue.Item, error) {
	l.inserts++
	return nil, nil
}
func (*ackedLocal) Remove(string, [][16]byte, bool) error  { return nil }
func (*ackedLocal) Pending(string) ([]wire.Message, error) { return nil, nil }
func (*ackedLocal) QueuedDevices() []string                { return nil }
func (*ackedLocal) HeldDevices() map[string]time.Time      { return nil }
func (*ackedLocal) Holds(string) bool                      { return true }
func (*ackedLocal) Wake(string) bool                       { return false }
func (*ackedLocal) RemoveDevice(string) (bool, error)      { return false, nil }

// TestCopiesCountAcknowledgedCommits: a push committed here and found
// acknowledged by then counts as a copy. Before, only what the store
// added counted: a push already delivered was reported on one node fewer,
// and with cluster.min_copies 2 refused with a 503 (a retry delivered it
// twice). TestPushRoutedAcrossNodes saw "committed on 1 nodes" under load.
func TestCopiesCountAcknowledgedCommits(t *testing.T) {
	gw, _ := tlsconf.Issue(tlsconf.Template{CommonName: "gw"}, nil)
	file := filepath.Join(t.TempDir(), "gw.pem")
	tlsconf.WriteKeyPair(gw, file, "")
	id, err := tlsconf.LoadIdentity(file, "")
	if err != nil {
		t.Fatal(err)
	}
	c := startNode(t, cluster.Config{Name: "solo", Bind: "127.0.0.1:0", Tune: tight, Logger: quiet,
		Meta: func() cluster.Meta { return cluster.Meta{Push: "127.0.0.1:1", Pin: id.Pin()} }})
	local := &ackedLocal{}
	r, err := cluster.NewRouter(cluster.RouterConfig{Cluster: c, Local: local, Identity: id, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	waitFor(t, 10*time.Second, func() error { return ownedBy(r, "pc-1", "solo") })
	acc, err := r.Push(context.Background(), []string{"pc-1", "pc-2"}, []byte("x"), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if local.inserts != 1 {
		t.Fatalf("%d commits here, want 1", local.inserts)
	}
	for _, a := range acc {
		if a.Copies != 1 || a.Seq != 0 {
			t.Errorf("%s: copies %d, seq %d; want 1 copy (committed here, acknowledged meanwhile) and no sequence (none kept)", a.Device, a.Copies, a.Seq)
		}
	}
}

// ownedBy checks that device's owners are exactly nodes.
func ownedBy(r *cluster.Router, device string, nodes ...string) error {
	if got := r.Owners(device); !slices.Equal(got, nodes) {
		return fmt.Errorf("owners of %s: %v, want %v", device, got, nodes)
	}
	return nil
}
