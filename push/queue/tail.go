package queue

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/dpgate/dpgate/internal/store"
	"github.com/dpgate/dpgate/push/wire"
)

// The journal and the tail: a push is durable once its record is in the
// journal (store.Journal), and waits in memory (the tail) until it is
// acknowledged, or a checkpoint moves it into the tree.
//
// Why a checkpoint never loses a push: it switches the journal's files
// first, under wmu, so that every push written to the old file is marked
// durable by then. Every durable push of the tail (a superset of the old
// file's unacknowledged ones) then goes either to the tree or, if young,
// into the new file again; each device's last sequence goes to the tree
// up to its first push that did not. Only then is the old file emptied.
// Replay at open skips a record whose sequence is not above its device's
// last sequence in the tree: that push was committed to the tree (and
// maybe acknowledged since, and deleted) or acknowledged before the
// checkpoint; the others are in a file still.

// CheckpointEvery is how often, while pushes are accepted, a journal file
// is emptied: the pushes unacknowledged in it for longer than this move
// into the tree, the younger ones are written to the other file again. A
// longer interval writes the tree less often; a crash delivers again what
// was acknowledged in the last one or two intervals.
const CheckpointEvery = 200 * time.Millisecond

// checkpointAbove starts a checkpoint before CheckpointEvery when the
// journal holds this many bytes.
const checkpointAbove = 32 << 20

// JournalName names the queue's journal files in the data directory
// (push-queue-0.journal and push-queue-1.journal).
const JournalName = "push-queue"

// ErrClosed is returned by Enqueue and Insert after Close.
var ErrClosed = errors.New("push: queue closed")

// Stats are the journal's counters since start.
type Stats struct {
	JournalWrites uint64 // each one fdatasync
	Checkpoints   uint64 // committed to the tree
	JournalBytes  int64  // held in the journal files now
}

// Stats reads the counters.
func (q *Queue) Stats() Stats {
	return Stats{JournalWrites: q.writesN.Load(), Checkpoints: q.checkpointsN.Load(), JournalBytes: q.journal.Size()}
}

// entry is a push in the tail.
type entry struct {
	device  string
	msg     wire.Message
	durable bool      // its journal write returned; only then is it delivered
	at      time.Time // when it became durable
}

// write is one caller's records, waiting for the journal.
type write struct {
	buf     []byte
	entries []*entry
	done    chan error
}

// add puts a push for device with a new sequence in the tail (not
// durable yet) and its record in w. q.mu is held.
func (q *Queue) add(w *write, device string, m wire.Message) (wire.Message, error) {
	seq, err := q.nextSeqLocked(device)
	if err != nil {
		return m, err
	}
	m.Seq = seq
	e := &entry{device: device, msg: m}
	q.tail[device] = append(q.tail[device], e)
	w.entries = append(w.entries, e)
	w.buf = store.AppendRecord(w.buf, encodeRecord(device, m))
	return m, nil
}

// discardLocked drops from the tail the pushes w added, not written.
func (q *Queue) discardLocked(w *write) {
	for _, e := range w.entries {
		q.removeLocked(e)
	}
}

// submit queues w for the journal (q.mu is held) and returns with q.mu
// released once w is durable, or failed (its pushes then dropped).
func (q *Queue) submit(w *write) error {
	w.done = make(chan error, 1)
	q.writes = append(q.writes, w)
	if !q.writing {
		q.writing = true
		q.workers.Add(1)
		go q.writeLoop()
	}
	q.mu.Unlock()
	return <-w.done
}

// writeLoop writes the waiting records, all of them in one journal
// write, until none is left: pushes arriving during a write share the
// next one.
func (q *Queue) writeLoop() {
	defer q.workers.Done()
	for {
		q.mu.Lock()
		ws := q.writes
		q.writes = nil
		if len(ws) == 0 {
			q.writing = false
			q.mu.Unlock()
			return
		}
		q.mu.Unlock()
		buf := ws[0].buf
		if len(ws) > 1 {
			buf = nil
			for _, w := range ws {
				buf = append(buf, w.buf...)
			}
		}
		q.wmu.Lock()
		err := q.journal.Append(buf)
		if err == nil {
			q.writesN.Add(1)
		}
		q.mu.Lock()
		now := time.Now()
		for _, w := range ws {
			if err != nil {
				q.discardLocked(w)
				continue
			}
			for _, e := range w.entries {
				e.durable, e.at = true, now
			}
		}
		start := err == nil && !q.started && !q.closed &&
			(time.Since(q.lastMove) >= q.every || q.journal.Size() >= checkpointAbove)
		if start {
			q.started = true
			q.workers.Add(1)
		}
		q.mu.Unlock()
		q.wmu.Unlock()
		for _, w := range ws {
			w.done <- err
		}
		if start {
			go func() {
				defer q.workers.Done()
				if err := q.checkpoint(false); err != nil {
					slog.Warn("push: moving queued pushes from the journal into the store failed; they stay in the journal", "err", err)
				}
				q.mu.Lock()
				q.started = false
				q.mu.Unlock()
			}()
		}
	}
}

// loadSeqs reads from the tree, in one read transaction and outside
// q.mu, the last sequences of the devices not seen since start (a push
// to all of them would otherwise hold q.mu, and every session's reads
// and ACKs, for one transaction each).
func (q *Queue) loadSeqs(devices []string) error {
	q.mu.Lock()
	var missing []string
	for _, d := range devices {
		if _, ok := q.last[d]; !ok {
			missing = append(missing, d)
		}
	}
	q.mu.Unlock()
	if len(missing) == 0 {
		return nil
	}
	found := make(map[string]uint64, len(missing))
	err := q.db.View(func(tx *bolt.Tx) error {
		for _, d := range missing {
			found[d] = lastSeq(tx, d)
		}
		return nil
	})
	if err != nil {
		return err
	}
	// Unchanged meanwhile: only a checkpoint writes a device's last
	// sequence, and only for a device it has in q.last.
	q.mu.Lock()
	for d, last := range found {
		if _, ok := q.last[d]; !ok {
			q.last[d], q.saved[d] = last, last
		}
	}
	q.mu.Unlock()
	return nil
}

// nextSeqLocked assigns the device's next sequence. q.mu is held.
func (q *Queue) nextSeqLocked(device string) (uint64, error) {
	last, ok := q.last[device]
	if !ok {
		err := q.db.View(func(tx *bolt.Tx) error {
			last = lastSeq(tx, device)
			return nil
		})
		if err != nil {
			return 0, err
		}
		q.saved[device] = last
	}
	q.last[device] = last + 1
	q.dirty[device] = true
	return last + 1, nil
}

// lastSeq is the device's last sequence in the tree: lastSeqKey in its
// bucket, or in a store of an earlier version the push_seq bucket; never
// below a message still queued.
func lastSeq(tx *bolt.Tx, device string) uint64 {
	db := deviceBucket(tx, device)
	if db != nil {
		if v, err := store.Unseal(lastSeqKey, db.Get(lastSeqKey)); err == nil && len(v) == 8 {
			return binary.BigEndian.Uint64(v)
		}
	}
	// None yet, or damaged: the earlier version's counter, and after the
	// highest sequence queued.
	var last uint64
	if sb := tx.Bucket([]byte(bucketSeq)); sb != nil {
		if v, err := store.Unseal([]byte(device), sb.Get([]byte(device))); err == nil && len(v) == 8 {
			last = binary.BigEndian.Uint64(v)
		}
	}
	if db == nil {
		return last
	}
	c := db.Cursor()
	k, _ := c.Last()
	if isLastSeq(k) {
		k, _ = c.Prev()
	}
	if len(k) == 8 {
		last = max(last, binary.BigEndian.Uint64(k))
	}
	return last
}

func putLastSeq(db *bolt.Bucket, seq uint64) error {
	return db.Put(lastSeqKey, store.Seal(lastSeqKey, binary.BigEndian.AppendUint64(nil, seq)))
}

// findLocked returns the device's push seq in the tail, or nil.
func (q *Queue) findLocked(device string, seq uint64) *entry {
	es := q.tail[device]
	i, ok := slices.BinarySearchFunc(es, seq, func(e *entry, s uint64) int { return cmp.Compare(e.msg.Seq, s) })
	if !ok {
		return nil
	}
	return es[i]
}

// removeLocked drops e from the tail, if it is still there.
func (q *Queue) removeLocked(e *entry) {
	es := q.tail[e.device]
	if i := slices.Index(es, e); i >= 0 {
		es = slices.Delete(es, i, i+1)
		if len(es) == 0 {
			delete(q.tail, e.device)
		} else {
			q.tail[e.device] = es
		}
	}
}

// durableLocked counts the device's durable pushes in the tail.
func (q *Queue) durableLocked(device string) int {
	n := 0
	for _, e := range q.tail[device] {
		if e.durable {
			n++
		}
	}
	return n
}

// Checkpoint moves every push the journal holds unacknowledged into the
// tree and empties a journal file; Close does it last.
func (q *Queue) Checkpoint() error { return q.checkpoint(true) }

// checkpoint empties the journal file written to since the last one.
// The pushes still unacknowledged in it move into the tree, all of them
// or (the queue's own checkpoints, every CheckpointEvery while pushes
// come in) those durable for longer than CheckpointEvery; the younger
// ones are written again to the other file instead, since most will be
// acknowledged before the next checkpoint. A push to all of 15,000
// devices is so copied once (one write, 1.2 MB) rather than committed to
// the tree as the agents are acknowledging it, and deleted there again.
func (q *Queue) checkpoint(all bool) error {
	q.cpMu.Lock()
	defer q.cpMu.Unlock()
	q.wmu.Lock()
	old := q.journal.Switch()
	q.wmu.Unlock()

	q.mu.Lock()
	q.moving = true // until the tree has what is taken here
	young := time.Now().Add(-q.every)
	var moved []*entry
	var forward []byte
	// A device's last sequence in the tree stops below its first push
	// not moved there: that push's record (in the other file) is what
	// brings it back after a crash.
	stay := map[string]uint64{}
	for dev, es := range q.tail {
		for _, e := range es {
			if e.durable && (all || e.at.Before(young)) {
				moved = append(moved, e)
				continue
			}
			if _, ok := stay[dev]; !ok {
				stay[dev] = e.msg.Seq
			}
			if e.durable { // young: copied to the other file
				forward = store.AppendRecord(forward, encodeRecord(dev, e.msg))
			} // else written to the other file already
		}
	}
	lasts := make(map[string]uint64, len(q.dirty)) // to write: those the tree does not have
	for dev := range q.dirty {
		last := q.last[dev]
		if first, ok := stay[dev]; ok {
			last = first - 1
		}
		if last != q.saved[dev] {
			lasts[dev] = last
		}
		if last == q.last[dev] {
			delete(q.dirty, dev)
		}
	}
	q.mu.Unlock()

	var err error
	if len(forward) > 0 {
		q.wmu.Lock()
		err = q.journal.Append(forward)
		q.wmu.Unlock()
	}
	if err == nil && (len(lasts) > 0 || len(moved) > 0) {
		err = q.commitCheckpoint(lasts, moved)
	}
	q.mu.Lock()
	q.moving, q.lastMove = false, time.Now()
	if err != nil {
		for dev := range lasts {
			q.dirty[dev] = true
		}
		q.mu.Unlock()
		return fmt.Errorf("push: queue checkpoint: %w", err)
	}
	for _, e := range moved {
		q.removeLocked(e) // unless acknowledged meanwhile (Ack deletes it from the tree)
	}
	maps.Copy(q.saved, lasts)
	q.mu.Unlock()
	q.checkpointsN.Add(1)
	return q.journal.Empty(old)
}

// commitCheckpoint writes a checkpoint's last sequences and pushes to the
// tree, in one transaction.
func (q *Queue) commitCheckpoint(lasts map[string]uint64, moved []*entry) error {
	return q.db.Batch(func(tx *bolt.Tx) error {
		qb, err := tx.CreateBucketIfNotExists([]byte(bucketQueue))
		if err != nil {
			return err
		}
		for dev, last := range lasts {
			db, err := qb.CreateBucketIfNotExists([]byte(dev))
			if err != nil {
				return err
			}
			if err := putLastSeq(db, last); err != nil {
				return err
			}
		}
		for _, e := range moved {
			db, err := qb.CreateBucketIfNotExists([]byte(e.device))
			if err != nil {
				return err
			}
			if err := db.Put(seqKey(e.msg.Seq), encodeStored(e.msg.Seq, e.msg)); err != nil {
				return err
			}
		}
		return nil
	})
}

// replay commits to the tree what the journal holds from before a crash
// (or a stop that could not checkpoint), then empties the journal.
func (q *Queue) replay() error {
	type rec struct {
		dev string
		m   wire.Message
	}
	var recs []rec
	bad := 0
	damaged, err := q.journal.Records(func(body []byte) error {
		dev, m, err := decodeRecord(body)
		if err != nil {
			bad++
			return nil
		}
		recs = append(recs, rec{dev, m})
		return nil
	})
	if err != nil {
		return fmt.Errorf("push: queue journal: %w", err)
	}
	for path, n := range damaged {
		// A write cut short by the crash was never acknowledged; anything
		// else there is damage, and what it held is lost.
		slog.Warn("push: queue journal: a record cut short or failing its checksum; it and what follows in the file were left out (the last write before a crash, never acknowledged, or damage)",
			"file", path, "bytes", n)
	}
	if bad > 0 {
		slog.Warn("push: queue journal: records of an unknown form were left out", "records", bad)
	}
	if q.journal.Size() == 0 {
		return nil
	}
	slices.SortStableFunc(recs, func(a, b rec) int {
		return cmp.Or(cmp.Compare(a.dev, b.dev), cmp.Compare(a.m.Seq, b.m.Seq))
	})
	replayed := 0
	err = q.db.Update(func(tx *bolt.Tx) error {
		replayed = 0
		qb, err := tx.CreateBucketIfNotExists([]byte(bucketQueue))
		if err != nil {
			return err
		}
		for i, r := range recs {
			db, err := qb.CreateBucketIfNotExists([]byte(r.dev))
			if err != nil {
				return err
			}
			if r.m.Seq <= lastSeq(tx, r.dev) {
				continue // in the tree already, or acknowledged
			}
			if err := db.Put(seqKey(r.m.Seq), encodeStored(r.m.Seq, r.m)); err != nil {
				return err
			}
			if i+1 == len(recs) || recs[i+1].dev != r.dev {
				if err := putLastSeq(db, r.m.Seq); err != nil {
					return err
				}
			}
			replayed++
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("push: queue journal replay: %w", err)
	}
	if replayed > 0 {
		slog.Info("push: queued pushes brought back from the journal", "pushes", replayed)
	}
	for range 2 {
		if err := q.journal.Empty(q.journal.Switch()); err != nil {
			return err
		}
	}
	q.forgetExpiry()
	return nil
}

// Close moves what the journal holds into the tree, commits the
// deletions of acknowledged pushes and closes the journal. Enqueue and
// Insert fail after it (ErrClosed).
func (q *Queue) Close() error {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return nil
	}
	q.closed = true
	q.mu.Unlock()
	q.workers.Wait()
	err := errors.Join(q.Checkpoint(), q.Flush())
	return errors.Join(err, q.journal.Close())
}

// Record form: device length (2) | device | sequence (8) | id (16) |
// expiry unix ms (8) | payload.
func encodeRecord(device string, m wire.Message) []byte {
	b := make([]byte, 0, 2+len(device)+32+len(m.Payload))
	b = binary.BigEndian.AppendUint16(b, uint16(len(device)))
	b = append(b, device...)
	b = binary.BigEndian.AppendUint64(b, m.Seq)
	b = append(b, m.ID[:]...)
	b = binary.BigEndian.AppendUint64(b, uint64(m.Expiry))
	return append(b, m.Payload...)
}

func decodeRecord(b []byte) (string, wire.Message, error) {
	if len(b) < 2 {
		return "", wire.Message{}, errCorrupt
	}
	n := int(binary.BigEndian.Uint16(b))
	if len(b) < 2+n+32 || n == 0 {
		return "", wire.Message{}, errCorrupt
	}
	dev, b := string(b[2:2+n]), b[2+n:]
	m := wire.Message{Seq: binary.BigEndian.Uint64(b), Expiry: int64(binary.BigEndian.Uint64(b[24:32])), Payload: b[32:]}
	copy(m.ID[:], b[8:24])
	return dev, m, nil
}

// Drop deletes everything queued for device, in the tail and in the tree
// (a device forgotten).
func (q *Queue) Drop(device string) error {
	q.cpMu.Lock() // no checkpoint puts any back into the tree meanwhile
	defer q.cpMu.Unlock()
	q.mu.Lock()
	for _, e := range slices.Clone(q.tail[device]) {
		q.removeLocked(e)
	}
	delete(q.last, device) // sequences start over, as for a device never seen
	delete(q.saved, device)
	delete(q.dirty, device)
	q.mu.Unlock()
	return q.db.Batch(func(tx *bolt.Tx) error {
		if qb := tx.Bucket([]byte(bucketQueue)); qb != nil && qb.Bucket([]byte(device)) != nil {
			return qb.DeleteBucket([]byte(device))
		}
		return nil
	})
}
