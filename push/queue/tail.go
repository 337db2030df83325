package queue

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
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
// into the new file again. Only then is the old file emptied.
//
// Replay at open puts the records of both files into the tree (a push in
// the tree and in a file is put once, under its sequence), but none of
// those a checkpoint had absorbed before a crash kept it from emptying
// their file. What a file takes while it is the active one begins with a
// record of a token drawn when it became so (mid-file, if an emptying
// failed); a checkpoint that moves pushes to the tree writes the old
// file's token there in the same transaction, and one that moves none
// writes it to the new file after the pushes it copied there. Replay
// skips the records that follow an absorbed token, up to the next token.
// So what a crash brings back that was acknowledged is what was
// acknowledged since the last checkpoint.

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
var ErrClosed = errors.New("queue: closed")

// Stats are the journal's counters since start.
type Stats struct {
	JournalWrites uint64 // each one fdatasync
	Checkpoints   uint64 // committed to the tree
	JournalBytes  int64  // held in the journal files now
}

// ObserveWrites has fn called with the time of every journal write, its
// fdatasync included.
func (q *Queue) ObserveWrites(fn func(time.Duration)) { q.observeWrite.Store(&fn) }

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
	moving  bool      // a checkpoint is committing it to the tree
}

// Records that are not pushes: a device length of 0, then the kind, a
// number (8 bytes) and, for markDrop, the device.
const (
	markFile    = 1 // the first record a file takes once active: its token
	markAbsorbs = 2 // the file of this token is in the tree or copied here
	markDrop    = 3 // the device's pushes up to this sequence were dropped (Drop)
)

func markRecord(kind byte, n uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte{0, 0, kind}, n)
}

func dropRecord(device string, upTo uint64) []byte {
	return append(markRecord(markDrop, upTo), device...)
}

func decodeMark(b []byte) (kind byte, n uint64, device string, ok bool) {
	if len(b) < 11 || b[0] != 0 || b[1] != 0 {
		return 0, 0, "", false
	}
	return b[2], binary.BigEndian.Uint64(b[3:]), string(b[11:]), true
}

var absorbedKey = []byte("absorbed") // in bucketMeta: the token of the last file a checkpoint moved to the tree

// newFileLocked draws the token of the file that just became the active
// one; its record goes first in the file's next write. q.wmu is held.
func (q *Queue) newFileLocked() {
	q.token = rand.Uint64()
	q.header = store.AppendRecord(nil, markRecord(markFile, q.token))
}

// appendLocked writes buf to the active file, after the file's token if
// not written yet. q.wmu is held.
func (q *Queue) appendLocked(buf []byte) error {
	if q.header != nil {
		buf = slices.Concat(q.header, buf)
	}
	if err := q.journal.Append(buf); err != nil {
		return err
	}
	q.header = nil
	return nil
}

// write is one caller's records, waiting for the journal.
type write struct {
	buf     []byte
	entries []*entry
	done    chan error
}

// add puts a push for device with the device's next sequence in the
// tail (not durable yet) and its record in w. q.mu is held.
func (q *Queue) add(w *write, device string, m wire.Message) wire.Message {
	m.Seq = cmp.Or(q.last[device], q.base) + 1
	q.last[device] = m.Seq
	e := &entry{device: device, msg: m}
	q.tail[device] = append(q.tail[device], e)
	w.entries = append(w.entries, e)
	w.buf = store.AppendRecord(w.buf, encodeRecord(device, m))
	return m
}

// discardLocked drops from the tail the pushes w added, not written.
func (q *Queue) discardLocked(w *write) {
	for _, e := range w.entries {
		q.removeLocked(e)
	}
}

// submit queues w for the journal (q.mu is held) and returns with q.mu
// released once w is durable, or failed (its pushes then dropped).
//
// With no write in progress the caller writes w itself (with any other
// waiting by then): a push arriving alone, the usual case, costs no
// hand-over to another goroutine and back. Writes that arrive during
// that write are left to a writer goroutine, so the caller answers as
// soon as its own is durable.
func (q *Queue) submit(w *write) error {
	w.done = make(chan error, 1)
	q.writes = append(q.writes, w)
	if q.writing {
		q.mu.Unlock()
		return <-w.done
	}
	q.writing = true
	q.workers.Add(1)
	q.mu.Unlock()
	if q.writeWaiting() {
		go q.writeLoop()
	} else {
		q.workers.Done()
	}
	return <-w.done
}

// writeLoop writes the waiting records, all of them in one journal
// write, until none is left: pushes arriving during a write share the
// next one. q.writing is set, and one worker counted, for it.
func (q *Queue) writeLoop() {
	defer q.workers.Done()
	for q.writeWaiting() {
	}
}

// writeWaiting writes the waiting records in one journal write, if any;
// it reports whether more are waiting after it (else q.writing is
// cleared). Only the one goroutine that set q.writing calls it.
func (q *Queue) writeWaiting() (more bool) {
	q.mu.Lock()
	ws := q.writes
	q.writes = nil
	if len(ws) == 0 {
		q.writing = false
		q.mu.Unlock()
		return false
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
	began := time.Now()
	err := q.appendLocked(buf)
	now := time.Now()
	if err == nil {
		q.writesN.Add(1)
		if fn := q.observeWrite.Load(); fn != nil {
			(*fn)(now.Sub(began))
		}
	}
	q.mu.Lock()
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
		(now.Sub(q.lastMove) >= q.every || q.journal.Size() >= checkpointAbove)
	if start {
		q.started = true
		q.workers.Add(1)
	}
	more = len(q.writes) > 0
	if !more {
		q.writing = false
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
	return more
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
	old, oldToken := q.journal.Switch(), q.token
	q.newFileLocked()
	q.wmu.Unlock()

	q.mu.Lock()
	young := time.Now().Add(-q.every)
	var moved []*entry
	var forward []byte
	for dev, es := range q.tail {
		for _, e := range es {
			switch {
			case !e.durable: // written to the other file already
			case all || e.at.Before(young):
				e.moving = true // until the tree has it
				moved = append(moved, e)
			default: // young: copied to the other file
				forward = store.AppendRecord(forward, encodeRecord(dev, e.msg))
			}
		}
	}
	q.mu.Unlock()

	if len(moved) == 0 { // the old file holds nothing the new one does not
		forward = store.AppendRecord(forward, markRecord(markAbsorbs, oldToken))
	}
	var err error
	if len(forward) > 0 {
		q.wmu.Lock()
		err = q.appendLocked(forward)
		q.wmu.Unlock()
	}
	if err == nil && len(moved) > 0 {
		err = q.commitCheckpoint(moved, oldToken)
	}
	q.mu.Lock()
	q.lastMove = time.Now()
	for _, e := range moved {
		e.moving = false
		if err == nil {
			q.removeLocked(e) // unless acknowledged meanwhile (Ack deletes it from the tree)
		}
	}
	q.mu.Unlock()
	if err != nil {
		return fmt.Errorf("queue: checkpoint: %w", err)
	}
	q.checkpointsN.Add(1)
	return q.journal.Empty(old)
}

// commitCheckpoint writes a checkpoint's pushes to the tree, and the
// token of the file they came from, in one transaction.
func (q *Queue) commitCheckpoint(moved []*entry, token uint64) error {
	return q.db.Batch(func(tx *bolt.Tx) error {
		mb, err := tx.CreateBucketIfNotExists([]byte(bucketMeta))
		if err != nil {
			return err
		}
		if err := mb.Put(absorbedKey, sealU64(absorbedKey, token)); err != nil {
			return err
		}
		qb, err := tx.CreateBucketIfNotExists([]byte(bucketQueue))
		if err != nil {
			return err
		}
		for _, e := range moved {
			if err := putMessage(qb, e.device, e.msg); err != nil {
				return err
			}
		}
		return nil
	})
}

// putMessage puts m in device's bucket of qb, the queue's bucket.
func putMessage(qb *bolt.Bucket, device string, m wire.Message) error {
	db, err := qb.CreateBucketIfNotExists([]byte(device))
	if err != nil {
		return err
	}
	return db.Put(seqKey(m.Seq), encodeStored(m.Seq, m))
}

// replay commits to the tree what the journal holds from before a crash
// (or a stop that could not checkpoint), then empties the journal.
func (q *Queue) replay() error {
	type rec struct {
		dev string
		m   wire.Message
	}
	type segment struct {
		token uint64 // 0: records before any token (a journal of an earlier version)
		recs  []rec
	}
	var segs []*segment
	var cur [2]*segment
	absorbed := map[uint64]bool{}
	dropped := map[string]uint64{} // device -> its pushes up to this sequence were dropped
	bad := 0
	damaged, err := q.journal.Records(func(file int, body []byte) error {
		if kind, n, dev, ok := decodeMark(body); ok {
			switch {
			case kind == markFile && dev == "":
				cur[file] = &segment{token: n}
				segs = append(segs, cur[file])
			case kind == markAbsorbs && dev == "":
				absorbed[n] = true
			case kind == markDrop && dev != "":
				dropped[dev] = max(dropped[dev], n)
			default:
				bad++
			}
			return nil
		}
		dev, m, err := decodeRecord(body)
		if err != nil {
			bad++
			return nil
		}
		if cur[file] == nil {
			cur[file] = &segment{}
			segs = append(segs, cur[file])
		}
		cur[file].recs = append(cur[file].recs, rec{dev, m})
		return nil
	})
	if err != nil {
		return fmt.Errorf("queue: journal: %w", err)
	}
	for path, n := range damaged {
		// A write cut short by the crash was never acknowledged; anything
		// else there is damage, and what it held is lost.
		slog.Warn("push: queue journal: bytes cut short or failing their checksum were left out (the last write before a crash, never acknowledged, or damage; the records after damage were read)",
			"file", path, "bytes", n)
	}
	if bad > 0 {
		slog.Warn("push: queue journal: records of an unknown form were left out", "records", bad)
	}
	if q.journal.Size() == 0 {
		return nil
	}
	var all []rec
	err = q.db.Update(func(tx *bolt.Tx) error {
		if mb := tx.Bucket([]byte(bucketMeta)); mb != nil {
			if token, ok := unsealU64(absorbedKey, mb.Get(absorbedKey)); ok {
				absorbed[token] = true
			}
		}
		for _, sg := range segs {
			if sg.token == 0 || !absorbed[sg.token] {
				for _, r := range sg.recs {
					if r.m.Seq > dropped[r.dev] {
						all = append(all, r)
					}
				}
			}
		}
		// By device and sequence: each device's keys are appended in
		// order. A push in both files (copied forward by a checkpoint)
		// is put once.
		slices.SortFunc(all, func(a, b rec) int {
			return cmp.Or(cmp.Compare(a.dev, b.dev), cmp.Compare(a.m.Seq, b.m.Seq))
		})
		all = slices.CompactFunc(all, func(a, b rec) bool { return a.dev == b.dev && a.m.Seq == b.m.Seq })
		qb, err := tx.CreateBucketIfNotExists([]byte(bucketQueue))
		if err != nil {
			return err
		}
		for dev, upTo := range dropped { // a crash may have come before Drop's deletion
			if err := deleteUpTo(qb.Bucket([]byte(dev)), upTo); err != nil {
				return err
			}
		}
		for _, r := range all {
			if err := putMessage(qb, r.dev, r.m); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("queue: journal replay: %w", err)
	}
	if len(all) > 0 {
		slog.Info("push: queued pushes brought back from the journal", "pushes", len(all))
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
// (a device forgotten). A record in the journal says so first, so that a
// crash before the next checkpoint brings none of it back.
func (q *Queue) Drop(device string) error {
	q.cpMu.Lock() // no checkpoint puts any back into the tree meanwhile
	defer q.cpMu.Unlock()
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return ErrClosed
	}
	// Its sequences go on from q.last (a session may still hold the
	// device), so the record covers none accepted after it.
	upTo := q.last[device]
	if upTo > 0 { // else none of its pushes is in the journal
		if err := q.submit(&write{buf: store.AppendRecord(nil, dropRecord(device, upTo))}); err != nil {
			return fmt.Errorf("queue: dropping %s: %w", device, err)
		}
		q.mu.Lock()
	}
	for _, e := range slices.Clone(q.tail[device]) {
		if e.msg.Seq <= upTo {
			q.removeLocked(e)
		}
	}
	q.mu.Unlock()
	// Only a checkpoint (held off by cpMu) puts pushes in the tree: all
	// there are from before the record.
	return q.db.Batch(func(tx *bolt.Tx) error {
		if qb := tx.Bucket([]byte(bucketQueue)); qb != nil && qb.Bucket([]byte(device)) != nil {
			return qb.DeleteBucket([]byte(device))
		}
		return nil
	})
}

// deleteUpTo deletes the messages of db (nil: none) with sequences up to
// upTo.
func deleteUpTo(db *bolt.Bucket, upTo uint64) error {
	if db == nil {
		return nil
	}
	c := db.Cursor()
	for k, _ := c.First(); len(k) == 8 && binary.BigEndian.Uint64(k) <= upTo; k, _ = c.First() {
		if err := c.Delete(); err != nil {
			return err
		}
	}
	return nil
}
