// Package queue is the push server's durable state in the store (bbolt):
// the per-device push queue (queue.go: a push is fsynced before the API
// answers, removed on ACK, expired after its TTL; tail.go: the journal it
// is fsynced in, and the checkpoints that move it into the tree) and the
// device table (registry.go: who said HELLO, from where, with which MAC
// and address for wake-ups). push serves from it; the cluster router
// inserts the copies other nodes send.
package queue

import (
	"cmp"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"math"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/dpgate/dpgate/internal/store"
	"github.com/dpgate/dpgate/push/wire"
)

// Queue is the durable per-device push queue. A push is durable before
// Enqueue returns (in the queue's journal, fdatasynced: tail.go), stays
// until the device ACKs it, and is removed unacknowledged only by
// expiry, which is counted.
//
// A push is written to the journal, one write and one fdatasync for all
// the pushes that arrived during the previous write, and waits in memory
// (the tail) until it is acknowledged or a checkpoint, every
// CheckpointEvery while pushes come in, moves it into the store's tree
// (once it has waited that long). Most pushes are acknowledged before that and never touch the
// tree: it is written for the pushes of devices that are away. After a
// crash the journal is replayed into the tree before the queue serves;
// the pushes acknowledged since the last checkpoint come back with the
// rest and are delivered again, which at-least-once allows
// (docs/BENCHMARKS.md, "Push: the queue's journal").
//
// Layout in the tree: bucket "push_queue" holds one sub-bucket per
// device, keyed by the 8-byte big-endian sequence; bucket "push_meta"
// holds the epoch (seq.go).
//
// Sequences are assigned under one lock in the order the pushes are
// written to the journal, and a push is returned by Pending only once
// its write is durable, so a reader that sees sequence N also sees every
// lower one still queued: reading "everything after the last one I
// sent" never skips a message. A device's sequences go up by one while
// the queue is open and jump ahead at each open (seq.go), so they never
// go back, and nothing but the epoch is written to keep them so.
type Queue struct {
	db      *store.DB
	journal *store.Journal
	now     func() time.Time
	expired atomic.Uint64

	// nextExpiry: no message stored expires before it (unix ms; 0:
	// unknown). Expire reads nothing until then.
	expMu      sync.Mutex
	nextExpiry int64
	scans      atomic.Int64 // Expire's scans of the store, for tests

	mu       sync.Mutex
	tail     map[string][]*entry // device -> its pushes in the journal and not in the tree, by sequence
	last     map[string]uint64   // device -> the last sequence assigned since open
	base     uint64              // the epoch's first sequence less one: where every device starts (seq.go)
	writes   []*write            // waiting for the next journal write
	writing  bool                // a writer goroutine is running
	started  bool                // the writer started a checkpoint that has not ended
	lastMove time.Time
	closed   bool
	every    time.Duration  // CheckpointEvery; tests change it
	workers  sync.WaitGroup // the writer and checkpoint goroutines
	wmu      sync.Mutex     // held by the writer from a journal write until its pushes are marked durable
	token    uint64         // the active journal file's (tail.go); wmu
	header   []byte         // its record, until written to the file; wmu
	cpMu     sync.Mutex     // one checkpoint, Flush, Insert, Remove or count of the queue at a time

	writesN, checkpointsN atomic.Uint64                       // Stats
	observeWrite          atomic.Pointer[func(time.Duration)] // ObserveWrites

	ackMu    sync.Mutex
	acked    map[string]map[uint64]struct{} // device -> acknowledged in the tree, deletion not committed yet
	flushing map[string]map[uint64]struct{} // the same, taken by the Flush now committing them
	ackTimer bool                           // a Flush is scheduled
	ackDelay time.Duration                  // AckDelay; tests lengthen it
}

const bucketQueue = "push_queue"

// countMessages counts the messages in a device's bucket.
func countMessages(db *bolt.Bucket) int { return db.Stats().KeyN }

// NewQueue uses db and the journal beside its file, replaying into the
// tree whatever the journal holds from before a crash.
func NewQueue(db *store.DB) (*Queue, error) {
	j, err := store.OpenJournal(filepath.Dir(db.Path()), JournalName)
	if err != nil {
		return nil, fmt.Errorf("queue: %w", err)
	}
	q := &Queue{db: db, journal: j, now: time.Now, acked: map[string]map[uint64]struct{}{}, ackDelay: AckDelay,
		tail: map[string][]*entry{}, last: map[string]uint64{}, every: CheckpointEvery}
	if err := q.replay(); err != nil {
		j.Close()
		return nil, err
	}
	if err := q.newEpoch(); err != nil {
		j.Close()
		return nil, fmt.Errorf("queue: %w", err)
	}
	q.newFileLocked() // not shared yet
	return q, nil
}

// Enqueue makes payloads[i] for devices[i] durable, all in one journal
// write, and returns the messages in that order. A payload is kept as
// given: the caller must not change it afterwards.
func (q *Queue) Enqueue(devices []string, payloads [][]byte, ttl time.Duration) ([]wire.Message, error) {
	if len(payloads) != len(devices) {
		return nil, fmt.Errorf("queue: enqueue: %d payloads for %d devices", len(payloads), len(devices))
	}
	expiry := q.now().Add(ttl).UnixMilli()
	out := make([]wire.Message, len(devices))
	for i := range out {
		out[i] = wire.Message{Expiry: expiry, Payload: payloads[i]}
		rand.Read(out[i].ID[:])
	}
	w := &write{}
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return nil, ErrClosed
	}
	for i, dev := range devices {
		out[i] = q.add(w, dev, out[i])
	}
	if err := q.submit(w); err != nil {
		return nil, fmt.Errorf("queue: enqueue: %w", err)
	}
	q.expiresAt(expiry)
	return out, nil
}

// Pending returns up to limit queued, unexpired messages of device with a
// sequence above after, in order.
//
// A message that fails its checksum is never returned: it is skipped,
// counted and logged once (store.DB.Corrupt), and moved to the store's
// quarantine so that it is not read again; the device's status shows how
// many of its messages went there.
func (q *Queue) Pending(device string, after uint64, limit int) ([]wire.Message, error) {
	now := q.now().UnixMilli()
	// The tail first, then the tree: a checkpoint commits to the tree
	// before it drops from the tail, so nothing is missed in between.
	var fromTail []wire.Message
	q.mu.Lock()
	for _, e := range q.tail[device] {
		if len(fromTail) == limit {
			break
		}
		if e.durable && e.msg.Seq > after && e.msg.Expiry > now {
			fromTail = append(fromTail, e.msg)
		}
	}
	q.mu.Unlock()
	// Taken before the read: a Flush committing meanwhile clears them
	// once its deletions are in, but this read may not see those.
	hidden := q.ackedSeqs(device)
	var out []wire.Message
	var bad [][]byte
	err := q.db.View(func(tx *bolt.Tx) error {
		db := deviceBucket(tx, device)
		if db == nil {
			return nil
		}
		c := db.Cursor()
		for k, v := c.Seek(seqKey(after + 1)); k != nil && len(out) < limit; k, v = c.Next() {
			m, err := decodeStored(k, v)
			if err != nil {
				bad = append(bad, slices.Clone(k))
				continue
			}
			if _, gone := hidden[m.Seq]; m.Expiry > now && !gone {
				m.Payload = slices.Clone(m.Payload)
				out = append(out, m)
			}
		}
		return nil
	})
	q.db.QuarantineKeys([]string{bucketQueue, device}, bad)
	if len(fromTail) > 0 {
		out = append(out, fromTail...)
		slices.SortFunc(out, func(a, b wire.Message) int { return cmp.Compare(a.Seq, b.Seq) })
		out = slices.CompactFunc(out, func(a, b wire.Message) bool { return a.Seq == b.Seq })
		out = out[:min(len(out), limit)]
	}
	return out, err
}

// AckDelay is how long an acknowledged push may wait for its deletion to
// be committed: deletions are gathered and committed together, usually
// with the next pushes' commit, instead of each costing a commit and its
// fsyncs of its own. Not durable in between: after a crash in that
// window the push is delivered again, which at-least-once allows.
const AckDelay = 20 * time.Millisecond

// Ack records a message as acknowledged; it reports whether it was
// queued (a duplicate ACK is harmless) and its id. The message is no
// longer returned by Pending at once; its deletion is committed within
// AckDelay (or by Flush).
func (q *Queue) Ack(device string, seq uint64) (id [16]byte, found bool, err error) {
	q.mu.Lock()
	if e := q.findLocked(device, seq); e != nil && e.durable {
		q.removeLocked(e)
		if e.moving {
			// The checkpoint running may be committing it to the tree:
			// delete it there after (Flush waits for the checkpoint).
			q.ackLater(device, seq)
		}
		q.mu.Unlock()
		return e.msg.ID, true, nil
	}
	q.mu.Unlock()
	err = q.db.View(func(tx *bolt.Tx) error {
		db := deviceBucket(tx, device)
		if db == nil {
			return nil
		}
		v := db.Get(seqKey(seq))
		if v == nil {
			return nil
		}
		m, err := decodeStored(seqKey(seq), v)
		if err != nil {
			return nil // never sent, so not what the device acknowledges; Pending quarantines it
		}
		found, id = true, m.ID
		return nil
	})
	if err != nil || !found {
		return id, false, err
	}
	q.ackMu.Lock()
	defer q.ackMu.Unlock()
	if q.pendingLocked(device, seq) {
		return id, false, nil // a duplicate ACK
	}
	q.ackLaterLocked(device, seq)
	return id, true, nil
}

// ackLater gathers the deletion of an acknowledged push in the tree.
func (q *Queue) ackLater(device string, seq uint64) {
	q.ackMu.Lock()
	defer q.ackMu.Unlock()
	q.ackLaterLocked(device, seq)
}

// ackLaterLocked: ackMu is held.
func (q *Queue) ackLaterLocked(device string, seq uint64) {
	if q.acked[device] == nil {
		q.acked[device] = map[uint64]struct{}{}
	}
	q.acked[device][seq] = struct{}{}
	if !q.ackTimer {
		q.ackTimer = true
		time.AfterFunc(q.ackDelay, func() { q.Flush() })
	}
}

// Flush commits the deletions of the acknowledged messages gathered so
// far (a stopping server calls it before the store closes).
func (q *Queue) Flush() error {
	q.cpMu.Lock()
	defer q.cpMu.Unlock()
	q.ackMu.Lock()
	acked := q.acked
	// Still hidden from Pending and the depth until committed.
	q.acked, q.flushing, q.ackTimer = map[string]map[uint64]struct{}{}, acked, false
	q.ackMu.Unlock()
	defer func() {
		q.ackMu.Lock()
		q.flushing = nil
		q.ackMu.Unlock()
	}()
	if len(acked) == 0 {
		return nil
	}
	err := q.db.Batch(func(tx *bolt.Tx) error {
		for dev, seqs := range acked {
			db := deviceBucket(tx, dev)
			if db == nil {
				continue
			}
			for seq := range seqs {
				if err := db.Delete(seqKey(seq)); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("queue: deleting acknowledged pushes: %w", err)
	}
	return nil
}

// ackedCount is how many of the device's messages are acknowledged with
// their deletion not committed yet.
func (q *Queue) ackedCount(device string) int {
	q.ackMu.Lock()
	defer q.ackMu.Unlock()
	return len(q.acked[device]) + len(q.flushing[device])
}

// ackedSeqs is the device's messages acknowledged with their deletion
// not committed yet (nil: none).
func (q *Queue) ackedSeqs(device string) map[uint64]struct{} {
	q.ackMu.Lock()
	defer q.ackMu.Unlock()
	a, f := q.acked[device], q.flushing[device]
	if len(a)+len(f) == 0 {
		return nil
	}
	out := make(map[uint64]struct{}, len(a)+len(f))
	maps.Copy(out, a)
	maps.Copy(out, f)
	return out
}

// pendingLocked: ackMu is held.
func (q *Queue) pendingLocked(device string, seq uint64) bool {
	_, a := q.acked[device][seq]
	_, f := q.flushing[device][seq]
	return a || f
}

// Item is one message for one device, as nodes of a cluster pass them on:
// the id and expiry travel with it, the sequence is each node's own.
type Item struct {
	Device string
	wire.Message
}

// Insert makes durable messages that already have an id (copies from
// another node), skipping any id the device's queue already holds, and
// returns the ones added with their sequences here. Checking for the id
// reads the device's queue, which is short for a connected device.
func (q *Queue) Insert(items []Item) ([]Item, error) {
	// cpMu: no checkpoint moves a push from the tail to the tree between
	// looking in the one and in the other.
	q.cpMu.Lock()
	inTree := make([]bool, len(items))
	err := q.db.View(func(tx *bolt.Tx) error {
		for i, it := range items {
			if db := deviceBucket(tx, it.Device); db != nil {
				inTree[i] = hasID(db, it.ID)
			}
		}
		return nil
	})
	if err != nil {
		q.cpMu.Unlock()
		return nil, fmt.Errorf("queue: insert: %w", err)
	}
	var out []Item
	w := &write{}
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		q.cpMu.Unlock()
		return nil, ErrClosed
	}
	for i, it := range items {
		if inTree[i] || slices.ContainsFunc(q.tail[it.Device], func(e *entry) bool { return e.msg.ID == it.ID }) {
			continue
		}
		out = append(out, Item{Device: it.Device, Message: q.add(w, it.Device, it.Message)})
	}
	if len(w.entries) == 0 {
		q.mu.Unlock()
		q.cpMu.Unlock()
		return nil, nil
	}
	q.cpMu.Unlock() // the pushes are in the tail: the next Insert sees them
	if err := q.submit(w); err != nil {
		return nil, fmt.Errorf("queue: insert: %w", err)
	}
	for _, it := range out {
		q.expiresAt(it.Expiry)
	}
	return out, nil
}

// expiresAt notes a message committed with expiry (after its commit, so
// that a scan either sees the message or comes before this note).
func (q *Queue) expiresAt(expiry int64) {
	q.expMu.Lock()
	if q.nextExpiry != 0 {
		q.nextExpiry = min(q.nextExpiry, expiry)
	}
	q.expMu.Unlock()
}

// forgetExpiry makes the next Expire read the store (the earliest expiry
// is unknown).
func (q *Queue) forgetExpiry() {
	q.expMu.Lock()
	q.nextExpiry = 0
	q.expMu.Unlock()
}

func hasID(db *bolt.Bucket, id [16]byte) bool {
	c := db.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if m, err := decodeStored(k, v); err == nil && m.ID == id {
			return true
		}
	}
	return false
}

// Remove deletes a device's messages by id (acknowledged on another node,
// or handed over to the nodes that keep them now).
func (q *Queue) Remove(device string, ids [][16]byte) error {
	q.cpMu.Lock() // no checkpoint puts one back into the tree meanwhile
	defer q.cpMu.Unlock()
	q.mu.Lock()
	for _, e := range slices.Clone(q.tail[device]) {
		if slices.Contains(ids, e.msg.ID) {
			q.removeLocked(e)
		}
	}
	q.mu.Unlock()
	return q.db.Batch(func(tx *bolt.Tx) error {
		db := deviceBucket(tx, device)
		if db == nil {
			return nil
		}
		c := db.Cursor()
		for k, v := c.First(); k != nil; {
			if m, err := decodeStored(k, v); err == nil && slices.Contains(ids, m.ID) {
				if err := c.Delete(); err != nil {
					return err
				}
				k, v = c.Seek(k)
				continue
			}
			k, v = c.Next()
		}
		return nil
	})
}

// Devices lists the devices with queued messages.
func (q *Queue) Devices() []string {
	q.cpMu.Lock() // a checkpoint puts pushes in the tree before it drops them from the tail
	defer q.cpMu.Unlock()
	var out []string
	q.mu.Lock()
	for dev := range q.tail {
		if q.durableLocked(dev) > 0 {
			out = append(out, dev)
		}
	}
	q.mu.Unlock()
	q.db.View(func(tx *bolt.Tx) error {
		qb := tx.Bucket([]byte(bucketQueue))
		if qb == nil {
			return nil
		}
		return qb.ForEachBucket(func(dev []byte) error {
			if countMessages(qb.Bucket(dev)) > q.ackedCount(string(dev)) && !slices.Contains(out, string(dev)) {
				out = append(out, string(dev))
			}
			return nil
		})
	})
	return out
}

// Len counts a device's queued messages (expired ones not yet swept too)
// and those that failed their checksum and were kept aside, never
// delivered.
func (q *Queue) Len(device string) (queued, corrupt int) {
	q.cpMu.Lock() // not counted twice while a checkpoint moves them
	defer q.cpMu.Unlock()
	q.mu.Lock()
	queued = q.durableLocked(device)
	q.mu.Unlock()
	q.db.View(func(tx *bolt.Tx) error {
		if db := deviceBucket(tx, device); db != nil {
			queued += countMessages(db) - q.ackedCount(device)
		}
		corrupt = store.Quarantined(tx, bucketQueue, device)
		return nil
	})
	return queued, corrupt
}

// Expire deletes every message past its expiry and returns how many, by
// device. The total is kept for Expired.
//
// The scan is a read transaction, beside the pushes being accepted; only
// what it found is deleted in a write (none when nothing expired). The
// scan in the write transaction held every push's commit back for the
// whole of it: 17-20 ms at 15,000 devices, every 10 s (pushpeers' max
// latency; BenchmarkExpireBeside).
func (q *Queue) Expire() (map[string]int, error) {
	type found struct {
		dev, key []byte
		corrupt  bool
	}
	now := q.now().UnixMilli()
	q.expMu.Lock()
	if q.nextExpiry > now {
		q.expMu.Unlock()
		return nil, nil // nothing can have expired: no need to read
	}
	q.nextExpiry = math.MaxInt64 // lowered by what is committed from now on
	q.expMu.Unlock()
	q.scans.Add(1)
	earliest := int64(math.MaxInt64) // of the messages that stay
	counts := map[string]int{}
	q.cpMu.Lock() // no checkpoint is taking the tail meanwhile
	q.mu.Lock()
	for _, es := range q.tail {
		for _, e := range slices.Clone(es) {
			switch {
			case !e.durable: // noted when its write returns
			case e.msg.Expiry <= now:
				q.removeLocked(e)
				counts[e.device]++
			default:
				earliest = min(earliest, e.msg.Expiry)
			}
		}
	}
	q.mu.Unlock()
	q.cpMu.Unlock()
	var todo []found
	err := q.db.View(func(tx *bolt.Tx) error {
		qb := tx.Bucket([]byte(bucketQueue))
		if qb == nil {
			return nil
		}
		return qb.ForEachBucket(func(dev []byte) error {
			return qb.Bucket(dev).ForEach(func(k, v []byte) error {
				m, err := decodeStored(k, v)
				switch {
				case err != nil:
					// Its expiry cannot be trusted: kept aside, uncounted as expired.
					q.db.Corrupt([]string{bucketQueue, string(dev)}, k)
					todo = append(todo, found{slices.Clone(dev), slices.Clone(k), true})
				case m.Expiry <= now:
					todo = append(todo, found{slices.Clone(dev), slices.Clone(k), false})
				default:
					earliest = min(earliest, m.Expiry)
				}
				return nil
			})
		})
	})
	if err != nil {
		q.forgetExpiry()
		return nil, fmt.Errorf("queue: expire: %w", err)
	}
	q.expiresAt(earliest)
	for _, n := range counts {
		q.expired.Add(uint64(n))
	}
	if len(todo) == 0 {
		if len(counts) == 0 {
			return nil, nil
		}
		return counts, nil
	}
	inTree := map[string]int{}
	err = q.db.Batch(func(tx *bolt.Tx) error {
		clear(inTree) // Batch may run fn again
		for _, f := range todo {
			if f.corrupt {
				if err := store.Quarantine(tx, []string{bucketQueue, string(f.dev)}, f.key); err != nil {
					return err
				}
				continue
			}
			db := deviceBucket(tx, string(f.dev))
			if db == nil || db.Get(f.key) == nil {
				continue // acknowledged meanwhile
			}
			if err := db.Delete(f.key); err != nil {
				return err
			}
			inTree[string(f.dev)]++
		}
		return nil
	})
	if err != nil {
		q.forgetExpiry() // what expired is still there
		return counts, fmt.Errorf("queue: expire: %w", err)
	}
	for dev, n := range inTree {
		counts[dev] += n
		q.expired.Add(uint64(n))
	}
	return counts, nil
}

// Expired is the number of pushes expired undelivered since start.
func (q *Queue) Expired() uint64 { return q.expired.Load() }

func deviceBucket(tx *bolt.Tx, device string) *bolt.Bucket {
	qb := tx.Bucket([]byte(bucketQueue))
	if qb == nil {
		return nil
	}
	return qb.Bucket([]byte(device))
}

func seqKey(seq uint64) []byte { return binary.BigEndian.AppendUint64(nil, seq) }

// Stored form: id (16) | expiry unix ms (8) | payload, sealed with the
// store's checksum over the key and all of it.
func encodeStored(seq uint64, m wire.Message) []byte {
	b := make([]byte, 0, 24+len(m.Payload))
	b = append(b, m.ID[:]...)
	b = binary.BigEndian.AppendUint64(b, uint64(m.Expiry))
	return store.Seal(seqKey(seq), append(b, m.Payload...))
}

var errCorrupt = errors.New("queue: corrupt entry")

// decodeStored checks and decodes a stored message; its Payload aliases v
// (copy it to keep it past the transaction).
func decodeStored(k, v []byte) (wire.Message, error) {
	v, err := store.Unseal(k, v)
	if err != nil || len(v) < 24 || len(k) != 8 {
		return wire.Message{}, errCorrupt
	}
	m := wire.Message{Seq: binary.BigEndian.Uint64(k), Expiry: int64(binary.BigEndian.Uint64(v[16:24])), Payload: v[24:]}
	copy(m.ID[:], v[:16])
	return m, nil
}

// Depth counts the messages queued (expired ones not yet swept too) and
// the devices they are for, in one read transaction.
func (q *Queue) Depth() (messages, devices int) {
	q.cpMu.Lock() // not counted twice while a checkpoint moves them
	defer q.cpMu.Unlock()
	inTail := map[string]int{}
	q.mu.Lock()
	for dev := range q.tail {
		if n := q.durableLocked(dev); n > 0 {
			inTail[dev] = n
		}
	}
	q.mu.Unlock()
	messages, devices = 0, len(inTail)
	for _, n := range inTail {
		messages += n
	}
	q.db.View(func(tx *bolt.Tx) error {
		qb := tx.Bucket([]byte(bucketQueue))
		if qb == nil {
			return nil
		}
		return qb.ForEachBucket(func(dev []byte) error {
			if n := countMessages(qb.Bucket(dev)) - q.ackedCount(string(dev)); n > 0 {
				messages += n
				if inTail[string(dev)] == 0 {
					devices++
				}
			}
			return nil
		})
	})
	return messages, devices
}
