// Package queue is the push server's durable state in the store (bbolt):
// the per-device push queue (queue.go: a push is fsynced before the API
// answers, removed on ACK, expired after its TTL) and the device table
// (registry.go: who said HELLO, from where, with which MAC and address
// for wake-ups). push serves from it; the cluster router inserts the
// copies other nodes send.
package queue

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/dpgate/dpgate/internal/store"
	"github.com/dpgate/dpgate/push/wire"
)

// Queue is the durable per-device push queue. A push is committed to the
// store (fsynced) before Enqueue returns, stays until the device ACKs it,
// and is removed unacknowledged only by expiry, which is counted.
//
// Layout: bucket "push_queue" holds one sub-bucket per device, keyed by
// the 8-byte big-endian sequence, and under lastSeqKey (after every
// message) the device's last sequence. Stores written before that kept
// the last sequence in bucket "push_seq", still read for a device whose
// bucket has no lastSeqKey yet. Keeping it beside the messages spares
// every commit a second tree of 15,000 keys to rewrite (bbolt
// materialises and rewrites a leaf and its branch for each changed
// tree): one push among 15,000 devices committed in 358-368 µs with it,
// 276-307 µs without (BenchmarkEnqueue/serial).
//
// Sequences are assigned inside the write transaction and
// bbolt serializes writers, so a reader that sees sequence N also sees
// every lower one still queued: reading "everything after the last one I
// sent" never skips a message.
type Queue struct {
	db      *store.DB
	now     func() time.Time
	expired atomic.Uint64

	// nextExpiry: no message stored expires before it (unix ms; 0:
	// unknown). Expire reads nothing until then.
	expMu      sync.Mutex
	nextExpiry int64
	scans      atomic.Int64 // Expire's scans of the store, for tests

	ackMu    sync.Mutex
	acked    map[string]map[uint64]struct{} // device -> acknowledged, deletion not committed yet
	flushing map[string]map[uint64]struct{} // the same, taken by the Flush now committing them
	ackTimer bool                           // a Flush is scheduled
	ackDelay time.Duration                  // AckDelay; tests lengthen it
	flushMu  sync.Mutex                     // one Flush at a time
}

const (
	bucketQueue = "push_queue"
	bucketSeq   = "push_seq" // stores of earlier versions; read, never written
)

// lastSeqKey is the key of a device's last sequence in its bucket: nine
// bytes, so it sorts after every 8-byte message key.
var lastSeqKey = []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

func isLastSeq(k []byte) bool { return bytes.Equal(k, lastSeqKey) }

// countMessages counts the messages in a device's bucket.
func countMessages(db *bolt.Bucket) int {
	n := db.Stats().KeyN
	if db.Get(lastSeqKey) != nil {
		n--
	}
	return n
}

// NewQueue uses db.
func NewQueue(db *store.DB) *Queue {
	return &Queue{db: db, now: time.Now, acked: map[string]map[uint64]struct{}{}, ackDelay: AckDelay}
}

// Enqueue commits payloads[i] for devices[i], all in one transaction,
// and returns the messages in that order.
func (q *Queue) Enqueue(devices []string, payloads [][]byte, ttl time.Duration) ([]wire.Message, error) {
	if len(payloads) != len(devices) {
		return nil, fmt.Errorf("push: enqueue: %d payloads for %d devices", len(payloads), len(devices))
	}
	expiry := q.now().Add(ttl).UnixMilli()
	ids := make([][16]byte, len(devices))
	for i := range ids {
		rand.Read(ids[i][:])
	}
	var out []wire.Message
	err := q.db.Batch(func(tx *bolt.Tx) error {
		out = out[:0] // Batch may run fn again
		qb, err := tx.CreateBucketIfNotExists([]byte(bucketQueue))
		if err != nil {
			return err
		}
		for i, dev := range devices {
			db, err := qb.CreateBucketIfNotExists([]byte(dev))
			if err != nil {
				return err
			}
			seq, err := nextSeq(db, dev)
			if err != nil {
				return err
			}
			m := wire.Message{Seq: seq, ID: ids[i], Expiry: expiry, Payload: payloads[i]}
			if err := db.Put(seqKey(seq), encodeStored(seq, m)); err != nil {
				return err
			}
			out = append(out, m)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("push: enqueue: %w", err)
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
	var out []wire.Message
	var bad [][]byte
	err := q.db.View(func(tx *bolt.Tx) error {
		db := deviceBucket(tx, device)
		if db == nil {
			return nil
		}
		c := db.Cursor()
		for k, v := c.Seek(seqKey(after + 1)); k != nil && !isLastSeq(k) && len(out) < limit; k, v = c.Next() {
			m, err := decodeStored(k, v)
			if err != nil {
				bad = append(bad, slices.Clone(k))
				continue
			}
			if m.Expiry > now && !q.ackedNotFlushed(device, m.Seq) {
				m.Payload = slices.Clone(m.Payload)
				out = append(out, m)
			}
		}
		return nil
	})
	q.db.QuarantineKeys([]string{bucketQueue, device}, bad)
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
	if q.acked[device] == nil {
		q.acked[device] = map[uint64]struct{}{}
	}
	q.acked[device][seq] = struct{}{}
	if !q.ackTimer {
		q.ackTimer = true
		time.AfterFunc(q.ackDelay, func() { q.Flush() })
	}
	return id, true, nil
}

// Flush commits the deletions of the acknowledged messages gathered so
// far (a stopping server calls it before the store closes).
func (q *Queue) Flush() error {
	q.flushMu.Lock()
	defer q.flushMu.Unlock()
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
		return fmt.Errorf("push: deleting acknowledged pushes: %w", err)
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

// ackedNotFlushed reports whether the message was acknowledged and its
// deletion not committed yet.
func (q *Queue) ackedNotFlushed(device string, seq uint64) bool {
	q.ackMu.Lock()
	defer q.ackMu.Unlock()
	return q.pendingLocked(device, seq)
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

// Insert commits messages that already have an id (copies from another
// node), skipping any id the device's queue already holds, and returns
// the ones added with their sequences here. Checking for the id reads the
// device's queue, which is short for a connected device.
func (q *Queue) Insert(items []Item) ([]Item, error) {
	var out []Item
	err := q.db.Batch(func(tx *bolt.Tx) error {
		out = out[:0]
		qb, err := tx.CreateBucketIfNotExists([]byte(bucketQueue))
		if err != nil {
			return err
		}
		for _, it := range items {
			db, err := qb.CreateBucketIfNotExists([]byte(it.Device))
			if err != nil {
				return err
			}
			if hasID(db, it.ID) {
				continue
			}
			seq, err := nextSeq(db, it.Device)
			if err != nil {
				return err
			}
			it.Seq = seq
			if err := db.Put(seqKey(seq), encodeStored(seq, it.Message)); err != nil {
				return err
			}
			out = append(out, it)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("push: insert: %w", err)
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

// nextSeq assigns the device's next sequence inside the write
// transaction: one after its last (lastSeqKey in its bucket, or in a
// store of an earlier version the push_seq bucket), and never at or below
// a message still queued.
func nextSeq(db *bolt.Bucket, device string) (uint64, error) {
	var last uint64
	if v, err := store.Unseal(lastSeqKey, db.Get(lastSeqKey)); err == nil && len(v) == 8 {
		last = binary.BigEndian.Uint64(v)
	} else {
		// None yet, or damaged: the earlier version's counter, and
		// after the highest sequence queued.
		if sb := db.Tx().Bucket([]byte(bucketSeq)); sb != nil {
			if v, err := store.Unseal([]byte(device), sb.Get([]byte(device))); err == nil && len(v) == 8 {
				last = binary.BigEndian.Uint64(v)
			}
		}
		c := db.Cursor()
		k, _ := c.Last()
		if isLastSeq(k) {
			k, _ = c.Prev()
		}
		if len(k) == 8 {
			last = max(last, binary.BigEndian.Uint64(k))
		}
	}
	seq := last + 1
	return seq, db.Put(lastSeqKey, store.Seal(lastSeqKey, binary.BigEndian.AppendUint64(nil, seq)))
}

func hasID(db *bolt.Bucket, id [16]byte) bool {
	c := db.Cursor()
	for k, v := c.First(); k != nil && !isLastSeq(k); k, v = c.Next() {
		if m, err := decodeStored(k, v); err == nil && m.ID == id {
			return true
		}
	}
	return false
}

// Remove deletes a device's messages by id (acknowledged on another node,
// or handed over to the nodes that keep them now).
func (q *Queue) Remove(device string, ids [][16]byte) error {
	return q.db.Batch(func(tx *bolt.Tx) error {
		db := deviceBucket(tx, device)
		if db == nil {
			return nil
		}
		c := db.Cursor()
		for k, v := c.First(); k != nil && !isLastSeq(k); {
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
	var out []string
	q.db.View(func(tx *bolt.Tx) error {
		qb := tx.Bucket([]byte(bucketQueue))
		if qb == nil {
			return nil
		}
		return qb.ForEachBucket(func(dev []byte) error {
			if countMessages(qb.Bucket(dev)) > q.ackedCount(string(dev)) {
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
	q.db.View(func(tx *bolt.Tx) error {
		if db := deviceBucket(tx, device); db != nil {
			queued = countMessages(db) - q.ackedCount(device)
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
	var todo []found
	err := q.db.View(func(tx *bolt.Tx) error {
		qb := tx.Bucket([]byte(bucketQueue))
		if qb == nil {
			return nil
		}
		return qb.ForEachBucket(func(dev []byte) error {
			return qb.Bucket(dev).ForEach(func(k, v []byte) error {
				if isLastSeq(k) {
					return nil
				}
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
		return nil, fmt.Errorf("push: expire: %w", err)
	}
	q.expiresAt(earliest)
	if len(todo) == 0 {
		return nil, nil
	}
	counts := map[string]int{}
	err = q.db.Batch(func(tx *bolt.Tx) error {
		clear(counts) // Batch may run fn again
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
			counts[string(f.dev)]++
		}
		return nil
	})
	if err != nil {
		q.forgetExpiry() // what expired is still there
		return nil, fmt.Errorf("push: expire: %w", err)
	}
	for _, n := range counts {
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

var errCorrupt = errors.New("push: corrupt queue entry")

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
	q.db.View(func(tx *bolt.Tx) error {
		qb := tx.Bucket([]byte(bucketQueue))
		if qb == nil {
			return nil
		}
		return qb.ForEachBucket(func(dev []byte) error {
			if n := countMessages(qb.Bucket(dev)) - q.ackedCount(string(dev)); n > 0 {
				messages += n
				devices++
			}
			return nil
		})
	})
	return messages, devices
}
