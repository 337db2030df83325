package queue

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/dpgate/dpgate/internal/store"
	"github.com/dpgate/dpgate/internal/testutil"
	"github.com/dpgate/dpgate/push/wire"
	bolt "go.etcd.io/bbolt"
)

// openQueue opens db's queue (its journal beside db's file).
func openQueue(t testing.TB, db *store.DB) *Queue {
	t.Helper()
	q, err := NewQueue(db)
	if err != nil {
		t.Fatal(err)
	}
	return q
}

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
	q := openQueue(t, db)
	for _, p := range []string{"first-push", "VICTIM-push", "third-push"} {
		if _, err := q.Enqueue([]string{"dev-1"}, [][]byte{[]byte(p)}, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	q.Close() // into the tree
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
	q = openQueue(t, db)
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

// TestAckDeletionGathered: an ACK hides the push from Pending and the
// depth at once; a second ACK of it is a duplicate; its deletion is
// committed within AckDelay without a commit of its own being waited for,
// or by Flush. An ACK whose deletion was never committed (a crash) means
// the push is delivered again after the restart, as at-least-once allows.
func TestAckDeletionGathered(t *testing.T) {
	dir := t.TempDir()
	db, err := store.Open(dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	q := openQueue(t, db)
	msgs, err := q.Enqueue([]string{"pc"}, [][]byte{[]byte("a")}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	more, _ := q.Enqueue([]string{"pc"}, [][]byte{[]byte("b")}, time.Hour)
	if err := q.Checkpoint(); err != nil { // both in the tree, as for a device away a while
		t.Fatal(err)
	}
	if _, found, err := q.Ack("pc", msgs[0].Seq); !found || err != nil {
		t.Fatalf("Ack: found %v, %v", found, err)
	}
	if _, found, _ := q.Ack("pc", msgs[0].Seq); found {
		t.Error("a second ACK of the same push was found again, want a duplicate")
	}
	if got, _ := q.Pending("pc", 0, 10); len(got) != 1 || got[0].Seq != more[0].Seq {
		t.Errorf("Pending after the ACK: %v, want only the second push", got)
	}
	if n, _ := q.Depth(); n != 1 {
		t.Errorf("depth after the ACK: %d, want 1", n)
	}
	stored := func() int {
		n := 0
		db.View(func(tx *bolt.Tx) error { n = countMessages(deviceBucket(tx, "pc")); return nil })
		return n
	}
	testutil.WaitFor(t, 5*time.Second, func() error {
		if n := stored(); n != 1 {
			return fmt.Errorf("%d pushes in the store, want 1 once the deletion is committed", n)
		}
		return nil
	})

	// A crash before the deletion is committed: the push comes back.
	q.ackDelay = time.Hour
	q.Ack("pc", more[0].Seq)
	q.ackMu.Lock()
	q.acked = map[string]map[uint64]struct{}{} // what a crash forgets
	q.ackMu.Unlock()
	db.Close()
	db, err = store.Open(dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	q = openQueue(t, db)
	if got, _ := q.Pending("pc", 0, 10); len(got) != 1 || got[0].Seq != more[0].Seq {
		t.Errorf("after a crash before the deletion: %v, want the push again", got)
	}
	q.Ack("pc", more[0].Seq)
	if err := q.Flush(); err != nil || stored() != 0 {
		t.Errorf("Flush: %v, %d left in the store, want 0", err, stored())
	}
}

// TestExpireReadsOnlyWhenDue: the sweep reads the store only once a
// message can have expired (the earliest expiry is known after the
// first scan and lowered by every commit), and then expires exactly
// what is due.
func TestExpireReadsOnlyWhenDue(t *testing.T) {
	db, err := store.Open(t.TempDir(), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	q := openQueue(t, db)
	t0 := time.Now()
	at := t0
	q.now = func() time.Time { return at }
	sweep := func(d time.Duration, wantScans int64, wantExpired int) {
		t.Helper()
		at = t0.Add(d)
		counts, err := q.Expire()
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, c := range counts {
			n += c
		}
		if q.scans.Load() != wantScans || n != wantExpired {
			t.Fatalf("at +%v: %d scans, %d expired; want %d and %d", d, q.scans.Load(), n, wantScans, wantExpired)
		}
	}
	if _, err := q.Enqueue([]string{"dev-1"}, [][]byte{[]byte("an hour")}, time.Hour); err != nil {
		t.Fatal(err)
	}
	sweep(0, 1, 0)           // unknown at start: read once
	sweep(time.Minute, 1, 0) // nothing due before +1h
	at = t0.Add(time.Minute)
	if _, err := q.Enqueue([]string{"dev-2"}, [][]byte{[]byte("a minute")}, time.Minute); err != nil {
		t.Fatal(err)
	}
	sweep(90*time.Second, 1, 0)
	sweep(2*time.Minute+time.Second, 2, 1) // the minute one
	sweep(30*time.Minute, 2, 0)
	sweep(61*time.Minute, 3, 1) // the hour one
	sweep(10*time.Hour, 3, 0)   // nothing left
	if n, _ := q.Len("dev-1"); n != 0 {
		t.Errorf("dev-1 still queues %d", n)
	}
}

// TestSequencesNeverGoBack: a device's sequences go up by one while the
// queue is open, on after every push was acknowledged and deleted; each
// open starts an epoch above the last one and above every sequence still
// queued or recorded by an earlier version (whose records it removes),
// so no sequence is given twice.
func TestSequencesNeverGoBack(t *testing.T) {
	db, err := store.Open(t.TempDir(), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	q := openQueue(t, db)
	enqueue := func(dev string) uint64 {
		t.Helper()
		msgs, err := q.Enqueue([]string{dev}, [][]byte{[]byte("p")}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return msgs[0].Seq
	}
	reopen := func(change func(tx *bolt.Tx) error) {
		t.Helper()
		if err := q.Close(); err != nil {
			t.Fatal(err)
		}
		if change != nil {
			if err := db.Update(change); err != nil {
				t.Fatal(err)
			}
		}
		q = openQueue(t, db)
	}
	for i := range 3 {
		if seq := enqueue("pc-1"); seq != uint64(i+1) {
			t.Fatalf("push %d of a new store got sequence %d", i+1, seq)
		}
	}
	msgs, _ := q.Pending("pc-1", 0, 10)
	for _, m := range msgs {
		q.Ack("pc-1", m.Seq)
	}
	q.Flush()
	if n, devs := q.Depth(); n != 0 || devs != 0 || len(q.Devices()) != 0 {
		t.Fatalf("Depth %d messages %d devices, Devices %v; want none", n, devs, q.Devices())
	}
	if seq := enqueue("pc-1"); seq != 4 {
		t.Errorf("after all were acknowledged: sequence %d, want 4", seq)
	}

	reopen(nil)
	if seq := enqueue("pc-1"); seq != EpochStride+1 {
		t.Errorf("after a reopen: sequence %d, want %d (epoch 1)", seq, EpochStride+1)
	}
	if seq := enqueue("pc-2"); seq != EpochStride+1 {
		t.Errorf("another device after a reopen: sequence %d, want %d", seq, EpochStride+1)
	}

	// Records of earlier versions: a push_seq counter, a last sequence
	// beside pc-1's messages (and one damaged beside pc-2's).
	sealed := func(k []byte, v uint64) []byte { return store.Seal(k, binary.BigEndian.AppendUint64(nil, v)) }
	reopen(func(tx *bolt.Tx) error {
		sb, _ := tx.CreateBucketIfNotExists(bucketSeq)
		sb.Put([]byte("pc-old"), sealed([]byte("pc-old"), 5*EpochStride+41))
		deviceBucket(tx, "pc-2").Put(lastSeqKey, []byte("garbage"))
		return deviceBucket(tx, "pc-1").Put(lastSeqKey, sealed(lastSeqKey, 3*EpochStride+7))
	})
	if seq := enqueue("pc-old"); seq != 6*EpochStride+1 {
		t.Errorf("above an earlier version's counter %d: sequence %d, want %d", 5*EpochStride+41, seq, 6*EpochStride+1)
	}
	db.View(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketSeq) != nil || deviceBucket(tx, "pc-1").Get(lastSeqKey) != nil || deviceBucket(tx, "pc-2").Get(lastSeqKey) != nil {
			t.Error("an earlier version's sequence records are still there")
		}
		return nil
	})
	if n, _ := q.Len("pc-2"); n != 1 {
		t.Errorf("pc-2 queues %d, want its 1 push (the records are not messages)", n)
	}

	// A push queued with a sequence above the epochs (more than
	// EpochStride pushes to one device in one run).
	reopen(func(tx *bolt.Tx) error {
		m := wire.Message{Seq: 9*EpochStride + 5, Expiry: time.Now().Add(time.Hour).UnixMilli()}
		return deviceBucket(tx, "pc-1").Put(seqKey(m.Seq), encodeStored(m.Seq, m))
	})
	if seq := enqueue("pc-1"); seq != 10*EpochStride+1 {
		t.Errorf("above a queued sequence %d: sequence %d, want %d", 9*EpochStride+5, seq, 10*EpochStride+1)
	}
}
