package queue

import (
	"encoding/binary"
	"fmt"

	bolt "go.etcd.io/bbolt"

	"github.com/dpgate/dpgate/internal/store"
)

// Sequences. A device's pushes are numbered in the order they are
// accepted, and a number is never given twice nor goes back, across
// restarts too: an agent may remember the last one it handled. Each open
// of the queue starts an epoch, one more than the last (0 for a new
// store), and every device's sequences in it start at
// epoch × EpochStride + 1 and go up by one. So the only write that keeps
// sequences from going back is the epoch, once per open; before, each
// device's last sequence was written to the tree at every checkpoint
// that had pushed to it (most of a checkpoint's page writes when pushes
// spread over many devices).
//
// A device given EpochStride pushes in one run would run into the next
// epoch's numbers; the next open then starts above the highest sequence
// still queued, so no two queued pushes share a number even then.

// EpochStride is how many sequences a device has per epoch: 10⁹, so that
// a sequence reads as epoch and count (3000000042: the 42nd push to the
// device since the gateway's third restart).
const EpochStride = 1_000_000_000

const bucketMeta = "push_meta" // the epoch, under epochKey

var epochKey = []byte("epoch")

// Written by versions before epochs, removed by the first open after:
// each device's last sequence, in bucket "push_seq" and, later, under
// lastSeqKey in the device's bucket (nine bytes: after every message).
var (
	bucketSeq  = []byte("push_seq")
	lastSeqKey = []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
)

// newEpoch starts the next epoch (after replay: above every sequence the
// tree holds) and sets q.base, where every device's sequences start.
func (q *Queue) newEpoch() error {
	var epoch uint64
	err := q.db.Update(func(tx *bolt.Tx) error {
		mb, err := tx.CreateBucketIfNotExists([]byte(bucketMeta))
		if err != nil {
			return err
		}
		if last, ok := unsealU64(epochKey, mb.Get(epochKey)); ok {
			epoch = last + 1
		}
		high, err := highestSeq(tx)
		if err != nil {
			return err
		}
		if high > 0 {
			epoch = max(epoch, high/EpochStride+1)
		}
		return mb.Put(epochKey, sealU64(epochKey, epoch))
	})
	if err != nil {
		return fmt.Errorf("starting a sequence epoch: %w", err)
	}
	q.base = epoch * EpochStride
	return nil
}

// highestSeq is the highest sequence queued in the tree, or recorded
// there by an earlier version (whose records it removes).
func highestSeq(tx *bolt.Tx) (uint64, error) {
	var high uint64
	if sb := tx.Bucket(bucketSeq); sb != nil {
		err := sb.ForEach(func(k, v []byte) error {
			if n, ok := unsealU64(k, v); ok {
				high = max(high, n)
			}
			return nil
		})
		if err != nil {
			return 0, err
		}
		if err := tx.DeleteBucket(bucketSeq); err != nil {
			return 0, err
		}
	}
	qb := tx.Bucket([]byte(bucketQueue))
	if qb == nil {
		return high, nil
	}
	err := qb.ForEachBucket(func(dev []byte) error {
		db := qb.Bucket(dev)
		if v := db.Get(lastSeqKey); v != nil {
			if n, ok := unsealU64(lastSeqKey, v); ok {
				high = max(high, n)
			}
			if err := db.Delete(lastSeqKey); err != nil {
				return err
			}
		}
		if k, _ := db.Cursor().Last(); len(k) == 8 {
			high = max(high, binary.BigEndian.Uint64(k))
		}
		return nil
	})
	return high, err
}

// sealU64 is n stored under k, with the store's checksum.
func sealU64(k []byte, n uint64) []byte { return store.Seal(k, binary.BigEndian.AppendUint64(nil, n)) }

// unsealU64 reads what sealU64 stored (false: nothing, or damaged).
func unsealU64(k, v []byte) (uint64, bool) {
	v, err := store.Unseal(k, v)
	if err != nil || len(v) != 8 {
		return 0, false
	}
	return binary.BigEndian.Uint64(v), true
}
