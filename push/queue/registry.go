package queue

import (
	"encoding/json"
	"fmt"
	"net"
	"sort"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/dpgate/dpgate/internal/store"
	"github.com/dpgate/dpgate/push/wire"
)

// DeviceRecord is what the store keeps about a device between connections:
// where it was last seen, for wake-ups and for "push to all".
type DeviceRecord struct {
	ID        string    `json:"id"`
	FirstSeen time.Time `json:"first_seen"`
	LastSeen  time.Time `json:"last_seen"`
	LastAddr  string    `json:"last_addr,omitempty"`  // remote address of the last connection
	LocalAddr string    `json:"local_addr,omitempty"` // as the agent reported it
	MAC       string    `json:"mac,omitempty"`
	// ShutDownAt is set by the agent's shutdown notice and cleared when it
	// connects again: its missing connection is expected then.
	ShutDownAt *time.Time `json:"shut_down_at,omitempty"`
}

const bucketDevices = "devices"

// Registry is the device table: in memory, written through to the store.
type Registry struct {
	db *store.DB
	mu sync.RWMutex
	m  map[string]DeviceRecord
	// Removed counts the stored ids NewRegistry removed for breaking
	// CheckDeviceID.
	Removed int
}

// Remove forgets a device and drops its queued pushes.
func (r *Registry) Remove(id string) error {
	r.mu.Lock()
	delete(r.m, id)
	r.mu.Unlock()
	return r.db.Update(func(tx *bolt.Tx) error {
		if b := tx.Bucket([]byte(bucketDevices)); b != nil {
			if err := b.Delete([]byte(id)); err != nil {
				return err
			}
		}
		if qb := tx.Bucket([]byte(bucketQueue)); qb != nil && qb.Bucket([]byte(id)) != nil {
			return qb.DeleteBucket([]byte(id))
		}
		return nil
	})
}

// NewRegistry loads the table.
func NewRegistry(db *store.DB) (*Registry, error) {
	r := &Registry{db: db, m: map[string]DeviceRecord{}}
	// ForEach skips (and quarantines) records that fail their checksum;
	// such a device is known again when it next connects.
	// Ids stored by earlier versions that break CheckDeviceID are removed
	// with their queues: one of them made every push to all fail.
	var bad []string
	err := db.ForEach(bucketDevices, func(k, v []byte) error {
		var d DeviceRecord
		if err := json.Unmarshal(v, &d); err != nil {
			return fmt.Errorf("queue: device %s: %w", k, err)
		}
		if err := wire.CheckDeviceID(d.ID); err != nil || d.ID != string(k) {
			bad = append(bad, string(k))
			return nil
		}
		r.m[d.ID] = d
		return nil
	})
	if err != nil {
		return r, err
	}
	for _, id := range bad {
		if err := r.Remove(id); err != nil {
			return r, err
		}
	}
	r.Removed = len(bad)
	return r, nil
}

// Seen records a connection (or its end) of a device.
func (r *Registry) Seen(id string, remote net.Addr, h *wire.Hello, now time.Time) error {
	r.mu.Lock()
	d, ok := r.m[id]
	if !ok {
		d = DeviceRecord{ID: id, FirstSeen: now.UTC()}
	}
	d.LastSeen = now.UTC()
	if remote != nil {
		d.LastAddr = remote.String()
	}
	if h != nil {
		d.ShutDownAt = nil
		if h.LocalAddr.IsValid() {
			d.LocalAddr = h.LocalAddr.String()
		}
		if len(h.MAC) == 6 {
			d.MAC = net.HardwareAddr(h.MAC).String()
		}
	}
	r.m[id] = d
	r.mu.Unlock()
	return r.put(d)
}

// ShutDown records a device's shutdown notice.
func (r *Registry) ShutDown(id string, at time.Time) error {
	r.mu.Lock()
	d, ok := r.m[id]
	if !ok {
		r.mu.Unlock()
		return nil // a device never seen: nothing to mark
	}
	at = at.UTC()
	d.ShutDownAt = &at
	r.m[id] = d
	r.mu.Unlock()
	return r.put(d)
}

func (r *Registry) put(d DeviceRecord) error {
	b, _ := json.Marshal(d)
	id := d.ID
	return r.db.Batch(func(tx *bolt.Tx) error {
		bk, err := tx.CreateBucketIfNotExists([]byte(bucketDevices))
		if err != nil {
			return err
		}
		return bk.Put([]byte(id), store.Seal([]byte(id), b))
	})
}

// Get returns a device's record.
func (r *Registry) Get(id string) (DeviceRecord, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	d, ok := r.m[id]
	return d, ok
}

// IDs returns every known device id, sorted.
func (r *Registry) IDs() []string {
	r.mu.RLock()
	ids := make([]string, 0, len(r.m))
	for id := range r.m {
		ids = append(ids, id)
	}
	r.mu.RUnlock()
	sort.Strings(ids)
	return ids
}
