// Package store is dpgate's embedded database: one bbolt file in the data
// directory holding the agent certificate allow-list, and later the push
// queue and the device registry. Every write is a committed, fsynced bbolt
// transaction, so what a call reported as stored survives kill -9 and power
// loss.
//
// Only one process may open the file; a second one gets ErrLocked, which
// the CLI uses to tell "a gateway is running" from "no gateway".
package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// FileName is the database file inside the data directory.
const FileName = "dpgate.db"

var (
	// ErrNotFound is returned by Get for a missing key.
	ErrNotFound = errors.New("store: not found")
	// ErrLocked is returned by Open when another process holds the file.
	ErrLocked = errors.New("store: database is in use by another process (is a gateway running?)")
)

// DB is an open store.
type DB struct {
	bolt *bolt.DB

	mu         sync.Mutex
	pending    []batchCall // Batch calls waiting for the next commit
	committing bool        // a committer goroutine is running
}

type batchCall struct {
	fn  func(*bolt.Tx) error
	err chan error
}

// maxBatch caps the calls one commit takes.
const maxBatch = 1000

// Options tune Open. The zero value is right for the gateway.
type Options struct {
	// LockTimeout is how long to wait for another process's lock.
	// Default: 1s.
	LockTimeout time.Duration
}

// Open opens or creates the store in dir.
func Open(dir string, opts Options) (*DB, error) {
	if opts.LockTimeout == 0 {
		opts.LockTimeout = time.Second
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	path := filepath.Join(dir, FileName)
	b, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: opts.LockTimeout})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return nil, fmt.Errorf("%w: %s", ErrLocked, path)
		}
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	return &DB{bolt: b}, nil
}

// Close closes the file.
func (db *DB) Close() error { return db.bolt.Close() }

// Path is the database file.
func (db *DB) Path() string { return db.bolt.Path() }

// Put stores value under key in bucket, creating the bucket if needed.
func (db *DB) Put(bucket, key string, value []byte) error {
	return db.bolt.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte(bucket))
		if err != nil {
			return err
		}
		return b.Put([]byte(key), value)
	})
}

// Get returns a copy of the value under key, or ErrNotFound.
func (db *DB) Get(bucket, key string) ([]byte, error) {
	var out []byte
	err := db.bolt.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte(bucket))
		if b == nil {
			return ErrNotFound
		}
		v := b.Get([]byte(key))
		if v == nil {
			return ErrNotFound
		}
		out = append([]byte(nil), v...)
		return nil
	})
	return out, err
}

// Delete removes key from bucket; a missing key is not an error.
func (db *DB) Delete(bucket, key string) error {
	return db.bolt.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte(bucket))
		if b == nil {
			return nil
		}
		return b.Delete([]byte(key))
	})
}

// ForEach calls fn for every key in bucket in key order. The slices are
// valid only during the call.
func (db *DB) ForEach(bucket string, fn func(key, value []byte) error) error {
	return db.bolt.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte(bucket))
		if b == nil {
			return nil
		}
		return b.ForEach(fn)
	})
}

// Update runs fn in one read-write transaction, for callers that need
// several changes to commit together (the push queue).
func (db *DB) Update(fn func(tx *bolt.Tx) error) error { return db.bolt.Update(fn) }

// View runs fn in a read-only transaction.
func (db *DB) View(fn func(tx *bolt.Tx) error) error { return db.bolt.View(fn) }

// Check verifies the file's internal consistency (bbolt's page checks).
func (db *DB) Check() error {
	return db.bolt.View(func(tx *bolt.Tx) error {
		var errs []error
		for err := range tx.Check() {
			errs = append(errs, err)
		}
		return errors.Join(errs...)
	})
}

// Batch runs fn in a read-write transaction shared with other concurrent
// Batch calls, so many small writes cost one fsync. fn may run more than
// once and must be idempotent.
//
// It is a group commit, not bbolt's DB.Batch: bbolt waits a fixed delay
// to gather calls (10 ms by default), which a lone writer pays in full.
// Here the first call commits at once, and the calls that arrive while a
// commit runs share the next one, so a lone push waits for one fsync and
// a busy store still commits many writes per fsync.
func (db *DB) Batch(fn func(tx *bolt.Tx) error) error {
	c := batchCall{fn: fn, err: make(chan error, 1)}
	db.mu.Lock()
	db.pending = append(db.pending, c)
	start := !db.committing
	db.committing = true
	db.mu.Unlock()
	if start {
		go db.commit() // ends when no call is pending
	}
	return <-c.err
}

// commit runs the pending calls, a batch per transaction, until none is
// left. If a batch fails, each call runs alone so that one call's error
// is not another's.
func (db *DB) commit() {
	for {
		db.mu.Lock()
		n := min(len(db.pending), maxBatch)
		if n == 0 {
			db.committing = false
			db.mu.Unlock()
			return
		}
		batch := slices.Clone(db.pending[:n])
		db.pending = slices.Delete(db.pending, 0, n)
		db.mu.Unlock()
		err := db.bolt.Update(func(tx *bolt.Tx) error {
			for _, c := range batch {
				if err := c.fn(tx); err != nil {
					return err
				}
			}
			return nil
		})
		if err == nil || len(batch) == 1 {
			for _, c := range batch {
				c.err <- err
			}
			continue
		}
		for _, c := range batch {
			c.err <- db.bolt.Update(c.fn)
		}
	}
}
