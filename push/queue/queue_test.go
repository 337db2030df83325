package queue

import (
	"bytes"
	"os"
	"testing"
	"time"

	"github.com/dpgate/dpgate/internal/store"
)

// TestQueueSkipsAlteredPush: one byte of a queued payload changed in the
// file (bbolt cannot see it) makes that push fail its checksum: Pending
// never returns it, it is counted and kept aside, and the device's other
// pushes are delivered unchanged.
func TestQueueSkipsAlteredPush(t *testing.T) {
	dir := t.TempDir()
	db, err := store.Open(dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	q := NewQueue(db)
	for _, p := range []string{"first-push", "VICTIM-push", "third-push"} {
		if _, err := q.Enqueue([]string{"dev-1"}, []byte(p), time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	path := db.Path()
	db.Close()
	raw, _ := os.ReadFile(path)
	f, _ := os.OpenFile(path, os.O_RDWR, 0)
	for i := 0; ; {
		j := bytes.Index(raw[i:], []byte("VICTIM"))
		if j < 0 {
			break
		}
		f.WriteAt([]byte("W"), int64(i+j))
		i += j + 6
	}
	f.Close()

	db, err = store.Open(dir, store.Options{})
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer db.Close()
	q = NewQueue(db)
	msgs, err := q.Pending("dev-1", 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range msgs {
		got = append(got, string(m.Payload))
	}
	if len(got) != 2 || got[0] != "first-push" || got[1] != "third-push" {
		t.Fatalf("Pending = %q, want the two intact pushes", got)
	}
	if n := db.Stats().CorruptRecords; n != 1 {
		t.Errorf("corrupt records %d, want 1", n)
	}
	if queued, corrupt := q.Len("dev-1"); queued != 2 || corrupt != 1 {
		t.Errorf("Len = %d queued, %d corrupt; want 2 and 1", queued, corrupt)
	}
	// Read again: not counted twice, still not returned.
	msgs, _ = q.Pending("dev-1", 0, 10)
	if len(msgs) != 2 || db.Stats().CorruptRecords != 1 {
		t.Errorf("second read: %d pushes, %d corrupt counted", len(msgs), db.Stats().CorruptRecords)
	}
}
