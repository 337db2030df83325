package queue

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/dpgate/dpgate/internal/store"
	"github.com/dpgate/dpgate/push/wire"
)

// TestRegistryDropsBadStoredIDs: a device stored by an earlier version
// under an id that breaks the rule is removed at start with its queue,
// so that "push to all" no longer fails on it.
func TestRegistryDropsBadStoredIDs(t *testing.T) {
	db, err := store.Open(t.TempDir(), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	badID := strings.Repeat("x", wire.MaxDeviceID+1)
	q := openQueue(t, db)
	if _, err := q.Enqueue([]string{"good-1", badID}, [][]byte{[]byte("p"), []byte("p")}, time.Hour); err != nil {
		t.Fatal(err)
	}
	q.Close() // into the tree: the registry starts before the queue
	q = openQueue(t, db)
	for _, id := range []string{"good-1", badID} {
		b, _ := json.Marshal(DeviceRecord{ID: id})
		db.Update(func(tx *bolt.Tx) error {
			bk, _ := tx.CreateBucketIfNotExists([]byte(bucketDevices))
			return bk.Put([]byte(id), store.Seal([]byte(id), b))
		})
	}
	r, err := NewRegistry(db)
	if err != nil {
		t.Fatal(err)
	}
	if ids := r.IDs(); len(ids) != 1 || ids[0] != "good-1" || r.Removed != 1 {
		t.Errorf("registry ids %q, removed %d; want [good-1] and 1", ids, r.Removed)
	}
	if n, _ := q.Len(badID); n != 0 {
		t.Errorf("the bad id's queue still holds %d", n)
	}
	if n, _ := q.Len("good-1"); n != 1 {
		t.Errorf("good-1's queue holds %d, want 1", n)
	}
	r2, _ := NewRegistry(db)
	if r2.Removed != 0 || len(r2.IDs()) != 1 {
		t.Errorf("second start: removed %d, ids %q", r2.Removed, r2.IDs())
	}
}
