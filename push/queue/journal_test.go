package queue

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/dpgate/dpgate/internal/store"
	"github.com/dpgate/dpgate/push/wire"
)

// newCrashable opens a store in a new directory and its queue, which
// checkpoints only when told.
func newCrashable(t *testing.T) (dir string, db *store.DB, q *Queue) {
	t.Helper()
	dir = t.TempDir()
	db, err := store.Open(dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	q = openQueue(t, db)
	q.mu.Lock()
	q.every, q.lastMove = time.Hour, time.Now()
	q.mu.Unlock()
	return dir, db, q
}

// crash abandons q as a killed process would (nothing flushed, nothing
// checkpointed) and opens the store and its queue again.
func crash(t *testing.T, db *store.DB) (*store.DB, *Queue) {
	t.Helper()
	dir := filepath.Dir(db.Path())
	db.Close()
	db, err := store.Open(dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db, openQueue(t, db)
}

func enqueue(t *testing.T, q *Queue, dev string, payloads ...string) []wire.Message {
	t.Helper()
	var out []wire.Message
	for _, p := range payloads {
		m, err := q.Enqueue([]string{dev}, [][]byte{[]byte(p)}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, m...)
	}
	return out
}

func payloads(msgs []wire.Message) []string {
	var out []string
	for _, m := range msgs {
		out = append(out, string(m.Payload))
	}
	return out
}

// TestJournalAfterACrash: pushes accepted and never checkpointed come
// back from the journal after a crash, with their sequences and ids,
// those acknowledged since the last checkpoint too (at-least-once); the
// journal is empty after the replay and sequences go on above. After a
// clean Close, acknowledged pushes stay gone.
func TestJournalAfterACrash(t *testing.T) {
	_, db, q := newCrashable(t)
	pc1 := enqueue(t, q, "pc-1", "a", "b", "c", "d", "e")
	pc2 := enqueue(t, q, "pc-2", "x", "y", "z")
	for _, m := range pc1[:2] {
		if _, found, err := q.Ack("pc-1", m.Seq); !found || err != nil {
			t.Fatalf("Ack %d: %v %v", m.Seq, found, err)
		}
	}
	if got, _ := q.Pending("pc-1", 0, 10); !slices.Equal(payloads(got), []string{"c", "d", "e"}) {
		t.Fatalf("before the crash pc-1 has %q", payloads(got))
	}

	db, q = crash(t, db)
	got1, _ := q.Pending("pc-1", 0, 10)
	got2, _ := q.Pending("pc-2", 0, 10)
	if !slices.EqualFunc(got1, pc1, sameMessage) || !slices.EqualFunc(got2, pc2, sameMessage) {
		t.Fatalf("after the crash: pc-1 %q, pc-2 %q; want all 5 and 3 as accepted", payloads(got1), payloads(got2))
	}
	if n := q.journal.Size(); n != 0 {
		t.Errorf("the journal holds %d bytes after the replay, want 0", n)
	}
	if next := enqueue(t, q, "pc-1", "f"); next[0].Seq != EpochStride+1 {
		t.Errorf("next sequence %d, want %d (the next epoch's first, above %d)", next[0].Seq, EpochStride+1, pc1[4].Seq)
	}

	// A clean stop: what was acknowledged does not come back.
	got1, _ = q.Pending("pc-1", 0, 10)
	for _, m := range got1 {
		q.Ack("pc-1", m.Seq)
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Enqueue([]string{"pc-1"}, [][]byte{nil}, time.Hour); err != ErrClosed {
		t.Errorf("Enqueue after Close: %v, want ErrClosed", err)
	}
	_, q = crash(t, db)
	if got, _ := q.Pending("pc-1", 0, 10); len(got) != 0 {
		t.Errorf("after a clean stop pc-1 has %q, want nothing", payloads(got))
	}
	if got, _ := q.Pending("pc-2", 0, 10); len(got) != 3 {
		t.Errorf("after a clean stop pc-2 has %q, want 3", payloads(got))
	}
}

func sameMessage(a, b wire.Message) bool {
	return a.Seq == b.Seq && a.ID == b.ID && a.Expiry == b.Expiry && string(a.Payload) == string(b.Payload)
}

// TestCheckpointThenCrash: a push acknowledged before a checkpoint stays
// gone after a crash; pushes the checkpoint moved to the tree, and one
// written after it, come back once each, with one acknowledged in the
// tree whose deletion was not committed yet.
func TestCheckpointThenCrash(t *testing.T) {
	_, db, q := newCrashable(t)
	q.ackDelay = time.Hour
	first := enqueue(t, q, "pc", "a1", "a2", "a3")
	q.Ack("pc", first[0].Seq)
	if err := q.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	enqueue(t, q, "pc", "a4")
	q.Ack("pc", first[1].Seq) // in the tree now: its deletion waits for Flush
	if got, _ := q.Pending("pc", 0, 10); !slices.Equal(payloads(got), []string{"a3", "a4"}) {
		t.Fatalf("before the crash: %q", payloads(got))
	}
	_, q = crash(t, db)
	if got, _ := q.Pending("pc", 0, 10); !slices.Equal(payloads(got), []string{"a2", "a3", "a4"}) {
		t.Errorf("after the crash: %q, want a2 (deletion not committed), a3, a4", payloads(got))
	}
}

// TestTornJournalWrite: half a record at the end of the journal (a write
// the crash cut short, acknowledged to nobody) is left out; what comes
// before it is brought back, and the queue goes on.
func TestTornJournalWrite(t *testing.T) {
	dir, db, q := newCrashable(t)
	enqueue(t, q, "pc", "one", "two")
	rec := store.AppendRecord(nil, encodeRecord("pc", wire.Message{Seq: 3, Payload: []byte("three")}))
	f, err := os.OpenFile(filepath.Join(dir, JournalName+"-0"+store.JournalSuffix), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt(rec[:len(rec)-3], q.journal.Size()) // after the two records, all in file 0
	f.Close()
	_, q = crash(t, db)
	if got, _ := q.Pending("pc", 0, 10); !slices.Equal(payloads(got), []string{"one", "two"}) {
		t.Fatalf("after the torn write: %q", payloads(got))
	}
	if m := enqueue(t, q, "pc", "three"); m[0].Seq != EpochStride+1 {
		t.Errorf("next sequence %d, want %d (the next epoch's first)", m[0].Seq, EpochStride+1)
	}
}

// TestJournalUnderLoad: producers, readers that acknowledge, and a
// checkpoint every millisecond, all at once. Every read returns every
// push accepted before it and not acknowledged, in order, none twice;
// after a crash every push not acknowledged is back, none twice.
func TestJournalUnderLoad(t *testing.T) {
	db, err := store.Open(t.TempDir(), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	q := openQueue(t, db)
	q.mu.Lock()
	q.every = time.Millisecond
	q.mu.Unlock()
	const producers, perProducer, devices = 4, 150, 6
	var mu sync.Mutex
	accepted := map[string]map[[16]byte]bool{} // device -> id -> acknowledged
	seqSeen := map[string]bool{}
	for d := range devices {
		accepted[fmt.Sprint("dev-", d)] = map[[16]byte]bool{}
	}
	var wg sync.WaitGroup
	for p := range producers {
		wg.Go(func() {
			for i := range perProducer {
				dev := fmt.Sprint("dev-", (p+i)%devices)
				msgs, err := q.Enqueue([]string{dev}, [][]byte{fmt.Appendf(nil, "%d-%d", p, i)}, time.Hour)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				if seqSeen[dev+fmt.Sprint(msgs[0].Seq)] {
					t.Errorf("%s: sequence %d given twice", dev, msgs[0].Seq)
				}
				seqSeen[dev+fmt.Sprint(msgs[0].Seq)] = true
				if _, ok := accepted[dev][msgs[0].ID]; !ok { // a reader may have acknowledged it already
					accepted[dev][msgs[0].ID] = false
				}
				mu.Unlock()
			}
		})
	}
	done := make(chan struct{})
	var readers sync.WaitGroup
	for d := range devices {
		dev := fmt.Sprint("dev-", d)
		readers.Go(func() {
			for n := 0; ; n++ {
				select {
				case <-done:
					return
				default:
				}
				mu.Lock()
				var want [][16]byte
				for id, acked := range accepted[dev] {
					if !acked {
						want = append(want, id)
					}
				}
				mu.Unlock()
				got, err := q.Pending(dev, 0, 1<<20)
				if err != nil {
					t.Error(err)
					return
				}
				ids := map[[16]byte]bool{}
				for i, m := range got {
					if i > 0 && m.Seq <= got[i-1].Seq {
						t.Errorf("%s: sequence %d after %d", dev, m.Seq, got[i-1].Seq)
					}
					if ids[m.ID] {
						t.Errorf("%s: push %x returned twice", dev, m.ID)
					}
					ids[m.ID] = true
				}
				for _, id := range want {
					if !ids[id] {
						t.Errorf("%s: an accepted push not acknowledged is missing from Pending", dev)
						return
					}
				}
				if n%2 == 1 && len(got) > 0 { // acknowledge every other read's first push
					mu.Lock()
					accepted[dev][got[0].ID] = true
					mu.Unlock()
					if _, found, err := q.Ack(dev, got[0].Seq); !found || err != nil {
						t.Errorf("%s: Ack %d (returned by the read before it): found %v, %v", dev, got[0].Seq, found, err)
					}
				}
			}
		})
	}
	wg.Wait()
	close(done)
	readers.Wait()

	q.workers.Wait() // no checkpoint half done: the crash below is between writes
	_, q = crash(t, db)
	for dev, ids := range accepted {
		got, _ := q.Pending(dev, 0, 1<<20)
		seen := map[[16]byte]bool{}
		for _, m := range got {
			if seen[m.ID] {
				t.Errorf("%s: push %x twice after the crash", dev, m.ID)
			}
			seen[m.ID] = true
		}
		for id, acked := range ids {
			if !acked && !seen[id] {
				t.Errorf("%s: a push not acknowledged is lost after the crash", dev)
			}
		}
	}
}

// TestCrashBeforeJournalEmptied: a crash after a checkpoint but before
// it emptied the old journal file (emulated by putting the file back as
// it was) brings nothing back twice and nothing acknowledged before the
// checkpoint, whether the checkpoint moved the pushes to the tree (the
// file's token is in the tree) or moved none, every push young and
// copied to the other file (the token follows the copies there).
func TestCrashBeforeJournalEmptied(t *testing.T) {
	for _, tc := range []struct {
		name string
		all  bool
	}{{"moved to the tree", true}, {"copied, nothing moved", false}} {
		t.Run(tc.name, func(t *testing.T) {
			dir, db, q := newCrashable(t)
			msgs := enqueue(t, q, "pc", "p1", "p2", "p3")
			q.Ack("pc", msgs[0].Seq)
			oldFile := filepath.Join(dir, JournalName+"-0"+store.JournalSuffix)
			saved, err := os.ReadFile(oldFile)
			if err != nil {
				t.Fatal(err)
			}
			if err := q.checkpoint(tc.all); err != nil {
				t.Fatal(err)
			}
			if n, _ := q.Len("pc"); n != 2 {
				t.Fatalf("after the checkpoint pc queues %d, want 2", n)
			}
			os.WriteFile(oldFile, saved, 0o600)
			_, q = crash(t, db)
			if got, _ := q.Pending("pc", 0, 10); !slices.Equal(payloads(got), []string{"p2", "p3"}) {
				t.Errorf("after the crash: %q, want p2 and p3 once each", payloads(got))
			}
		})
	}
}

// TestCheckpointCopiesYoungPushes: the queue's own checkpoint moves into
// the tree only the pushes durable for longer than CheckpointEvery; the
// younger ones are written to the other journal file instead (most will
// be acknowledged before the next checkpoint), and a crash after it
// brings every one back once.
func TestCheckpointCopiesYoungPushes(t *testing.T) {
	_, db, q := newCrashable(t)
	enqueue(t, q, "pc", "old", "young")
	q.mu.Lock()
	q.tail["pc"][0].at = time.Now().Add(-2 * q.every)
	q.mu.Unlock()
	if err := q.checkpoint(false); err != nil {
		t.Fatal(err)
	}
	var inTree []string
	db.View(func(tx *bolt.Tx) error {
		return deviceBucket(tx, "pc").ForEach(func(k, v []byte) error {
			if m, err := decodeStored(k, v); err == nil {
				inTree = append(inTree, string(m.Payload))
			}
			return nil
		})
	})
	if !slices.Equal(inTree, []string{"old"}) {
		t.Errorf("in the tree after the checkpoint: %q, want only the old push", inTree)
	}
	if got, _ := q.Pending("pc", 0, 10); !slices.Equal(payloads(got), []string{"old", "young"}) {
		t.Errorf("after the checkpoint: %q", payloads(got))
	}
	_, q = crash(t, db)
	if got, _ := q.Pending("pc", 0, 10); !slices.Equal(payloads(got), []string{"old", "young"}) {
		t.Errorf("after a crash: %q, want both once", payloads(got))
	}
}

// TestJournalWriteFails: a push whose journal write fails is refused
// (Enqueue's error, the API's 5xx), never delivered and dropped from
// memory; the pushes before it stay.
func TestJournalWriteFails(t *testing.T) {
	_, _, q := newCrashable(t)
	enqueue(t, q, "pc", "kept")
	q.journal.Close() // every write fails from now on
	if _, err := q.Enqueue([]string{"pc"}, [][]byte{[]byte("refused")}, time.Hour); err == nil {
		t.Fatal("Enqueue succeeded with the journal unwritable")
	}
	if got, _ := q.Pending("pc", 0, 10); !slices.Equal(payloads(got), []string{"kept"}) {
		t.Errorf("Pending after a failed write: %q, want only the push before it", payloads(got))
	}
	if n, _ := q.Len("pc"); n != 1 {
		t.Errorf("Len after a failed write: %d, want 1", n)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if n := len(q.tail["pc"]); n != 1 {
		t.Errorf("the tail holds %d pushes for pc, want 1: the refused one dropped", n)
	}
}

// TestReplaySkipsOnlyAbsorbedSegments: a file that became the active one
// again without being emptied (its emptying failed) holds the records of
// its earlier turn, absorbed by a checkpoint, and then those of its new
// turn, after a new token. Replay skips the first and keeps the second.
func TestReplaySkipsOnlyAbsorbedSegments(t *testing.T) {
	dir := t.TempDir()
	db, err := store.Open(dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	exp := time.Now().Add(time.Hour).UnixMilli()
	push := func(seq uint64, p string) []byte {
		return store.AppendRecord(nil, encodeRecord("pc", wire.Message{Seq: seq, Expiry: exp, Payload: []byte(p)}))
	}
	mark := func(kind byte, token uint64) []byte { return store.AppendRecord(nil, markRecord(kind, token)) }
	files := [][]byte{
		// First turn (token 1): acknowledged before the checkpoint that
		// absorbed it. Second turn (token 3): accepted after.
		slices.Concat(mark(markFile, 1), push(1, "acked-before"), mark(markFile, 3), push(5, "after")),
		// The other file's turn (token 2): a young push copied, then
		// the old file's token.
		slices.Concat(mark(markFile, 2), push(2, "young"), mark(markAbsorbs, 1)),
	}
	for i, b := range files {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("%s-%d%s", JournalName, i, store.JournalSuffix)), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	q := openQueue(t, db)
	if got, _ := q.Pending("pc", 0, 10); !slices.Equal(payloads(got), []string{"young", "after"}) {
		t.Errorf("after the replay: %q, want young and after", payloads(got))
	}
}

// TestDropThenCrash: a device's pushes dropped (the device removed) stay
// gone after a crash, those in the journal and one the crash kept in the
// tree; a push to it accepted after the drop comes back, and another
// device's pushes are untouched.
func TestDropThenCrash(t *testing.T) {
	_, db, q := newCrashable(t)
	gone := enqueue(t, q, "gone", "g1", "g2")
	enqueue(t, q, "kept", "k1")
	if err := q.Drop("gone"); err != nil {
		t.Fatal(err)
	}
	if got, _ := q.Pending("gone", 0, 10); len(got) != 0 {
		t.Fatalf("after Drop: %q", payloads(got))
	}
	enqueue(t, q, "gone", "after")
	// As if the crash came before Drop's deletion in the tree.
	db.Update(func(tx *bolt.Tx) error {
		qb, _ := tx.CreateBucketIfNotExists([]byte(bucketQueue))
		b, _ := qb.CreateBucketIfNotExists([]byte("gone"))
		return b.Put(seqKey(gone[0].Seq), encodeStored(gone[0].Seq, gone[0]))
	})
	_, q = crash(t, db)
	if got, _ := q.Pending("gone", 0, 10); !slices.Equal(payloads(got), []string{"after"}) {
		t.Errorf("after the crash gone has %q, want only the push after the drop", payloads(got))
	}
	if got, _ := q.Pending("kept", 0, 10); !slices.Equal(payloads(got), []string{"k1"}) {
		t.Errorf("after the crash kept has %q, want k1", payloads(got))
	}
}
