// Package store is dpgate's embedded database: one bbolt file in the data
// directory holding the agent certificate allow-list, the push queue and
// the device registry. Every write is a committed, fsynced bbolt
// transaction, so what a call reported as stored survives kill -9 and power
// loss.
//
// The store does not trust its file. Open refuses a file that fails
// bbolt's consistency check, is cut short, is empty, or has vanished from
// a data directory that held one (the marker file says it did); every
// value carries a checksum (seal.go) checked on each read, and a record
// that fails it is moved aside (quarantined), counted and logged, never
// returned; a panic or memory fault inside bbolt while reading a damaged
// page becomes an error for that one call (guard). check.go has the
// operator's side: Inspect, Recover and Reset behind "dpgate store".
//
// Only one process may open the file; a second one gets ErrLocked, which
// the CLI uses to tell "a gateway is running" from "no gateway".
package store

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// FileName is the database file inside the data directory.
const FileName = "dpgate.db"

// MarkerFile, written beside the database on first start, records that
// this data directory holds a store: a later start that finds the
// database missing refuses instead of starting empty.
const MarkerFile = "dpgate.db.id"

// Format is the store's record format: 2 is every value sealed with a
// checksum. Files written before the format existed (no meta bucket) are
// sealed in place on first open.
const Format = 2

const (
	metaBucket = "dpgate_meta"
	// QuarantineBucket holds records that failed their checksum, raw,
	// under bucket path and key joined by NUL, so that they are read (and
	// counted) once and remain for "dpgate store check".
	QuarantineBucket = "corrupt_records"
)

var (
	// ErrNotFound is returned by Get for a missing key.
	ErrNotFound = errors.New("store: not found")
	// ErrLocked is returned by Open when another process holds the file.
	ErrLocked = errors.New("store: database is in use by another process (is a gateway running?)")
	// ErrDamaged marks a database file that cannot be trusted (see
	// DamageError), and reads that hit damage while serving.
	ErrDamaged = errors.New("store: database file is damaged")
	// ErrMissing is returned by Open when the marker says the data
	// directory held a store and the file is gone.
	ErrMissing = errors.New("store: database file is missing")
)

// DamageError says what is wrong with a database file and what to do.
type DamageError struct {
	Path     string
	Problems []string // the first few problems found
	Hint     string   // the next step for the operator
}

func (e *DamageError) Error() string {
	return fmt.Sprintf("store: %s is damaged: %s; %s", e.Path, strings.Join(e.Problems, "; "), e.Hint)
}

// Is makes errors.Is(err, ErrDamaged) true.
func (e *DamageError) Is(target error) bool { return target == ErrDamaged }

const hintRecover = `the gateway will not serve from it. Run "dpgate store check" for details, then "dpgate store recover" to copy every readable record into a new file (the damaged one is kept beside it), or restore the file from a backup`

// DB is an open store.
type DB struct {
	bolt *bolt.DB
	log  *slog.Logger

	mu         sync.Mutex
	pending    []batchCall // Batch calls waiting for the next commit
	committing bool        // a committer goroutine is running

	corrupt  atomic.Uint64 // records that failed their checksum
	failures atomic.Uint64 // calls that panicked or faulted inside bbolt
	openTxID int           // the last committed transaction at Open
	seenMu   sync.Mutex
	seen     map[string]bool // corrupt records already logged
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
	// Logger hears about corrupt records and failed reads. Default
	// slog.Default().
	Logger *slog.Logger
}

// Open opens or creates the store in dir. Before serving from an existing
// file it scans its page headers, reads every record under the fault
// guard and runs bbolt's consistency check in a child process (1.2 s for
// a 1.5 GiB file with a warm page cache here; see docs/BENCHMARKS.md); a
// damaged file is a *DamageError, a file missing from a directory that
// held one is ErrMissing.
func Open(dir string, opts Options) (*DB, error) {
	if opts.LockTimeout == 0 {
		opts.LockTimeout = time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	path := filepath.Join(dir, FileName)
	marker, err := readMarker(dir)
	if err != nil {
		return nil, err
	}
	st, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if marker != nil {
			return nil, fmt.Errorf("%w: %s held a store (created %s, recorded in %s) but %s is gone; restore it from a backup, or run \"dpgate store reset\" to start with an empty store (queued pushes, devices and the allow-list are lost)",
				ErrMissing, dir, marker.created, filepath.Join(dir, MarkerFile), path)
		}
	case err != nil:
		return nil, fmt.Errorf("store: %w", err)
	case st.Size() == 0:
		return nil, &DamageError{Path: path, Problems: []string{"the file is empty (0 bytes)"},
			Hint: `the gateway will not start with an empty store in its place. Restore the file from a backup, or run "dpgate store reset" to start with an empty store (queued pushes, devices and the allow-list are lost)`}
	default:
		if err := checkFile(path, opts.LockTimeout); err != nil {
			return nil, err
		}
	}
	db := &DB{log: opts.Logger, seen: map[string]bool{}}
	err = guard("open", func() error {
		var err error
		// The freelist is not written with each commit but rebuilt from
		// the tree at open (as etcd runs bbolt): a commit writes one page
		// fewer and allocates a third as much; open walks the tree once
		// more (docs/BENCHMARKS.md, "Push: the store's freelist").
		db.bolt, err = bolt.Open(path, 0o600, &bolt.Options{Timeout: opts.LockTimeout, NoFreelistSync: true, FreelistType: bolt.FreelistMapType})
		return err
	})
	if err != nil {
		switch {
		case errors.Is(err, berrors.ErrTimeout):
			return nil, fmt.Errorf("%w: %s", ErrLocked, path)
		case errors.Is(err, ErrDamaged), errors.Is(err, berrors.ErrInvalid), errors.Is(err, berrors.ErrChecksum),
			errors.Is(err, berrors.ErrVersionMismatch):
			return nil, &DamageError{Path: path, Problems: []string{err.Error()}, Hint: hintRecover}
		}
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	id, err := db.prepare()
	if err != nil {
		db.bolt.Close()
		return nil, err
	}
	db.openTxID = db.lastTxID()
	if marker == nil {
		if err := writeMarker(dir, id); err != nil {
			db.bolt.Close()
			return nil, err
		}
	} else if marker.id != id {
		db.log.Warn("store: the database file is not the one this data directory created (restored from another node's backup?)",
			"file", path, "store_id", id, "marker_id", marker.id)
	}
	return db, nil
}

// checkFile runs bbolt's consistency check on a read-only view of the
// file, before the gateway opens it for writing (a read-write open reads
// the freelist, which panics on a damaged one). A file shorter than its
// own meta page says is refused first: mapped pages past the end of a
// file fault instead of failing.
func checkFile(path string, lockTimeout time.Duration) error {
	problems, _, err := isolatedConsistency(path, lockTimeout)
	if err != nil {
		return err
	}
	if len(problems) > 0 {
		return &DamageError{Path: path, Problems: problems, Hint: hintRecover}
	}
	return nil
}

// maxProblems caps the problems a check reports; the first few say enough.
const maxProblems = 5

// consistency returns what is wrong with an open file's pages: its size
// against its meta page (cutShort: bbolt's check is not run then), then
// bbolt's check.
func consistency(b *bolt.DB, path string) (problems []string, cutShort bool) {
	st, err := os.Stat(path)
	if err != nil {
		return []string{err.Error()}, false
	}
	b.View(func(tx *bolt.Tx) error {
		if cutShort = st.Size() < tx.Size(); cutShort {
			problems = append(problems, fmt.Sprintf("the file is cut short: %d bytes, its meta page says %d", st.Size(), tx.Size()))
			return nil
		}
		// Page headers first: one whose overflow count was corrupted makes
		// bbolt's Check count to four billion (a hang that eats memory).
		if err := pageHeaders(path, int64(b.Info().PageSize), tx.Size()); err != nil {
			problems = append(problems, err.Error())
			return nil
		}
		// Read everything once in this goroutine first: bbolt's Check walks
		// in a goroutine of its own, where a read past the memory map (a
		// bucket header whose length was corrupted) is a fatal fault that
		// nothing can recover; under guard it is an error.
		if err := guard("walk", func() error { return touchAll(tx) }); err != nil {
			problems = append(problems, err.Error())
			return nil
		}
		n := 0
		for err := range tx.Check() {
			if n++; n <= maxProblems {
				problems = append(problems, err.Error())
			}
		}
		if n > maxProblems {
			problems = append(problems, fmt.Sprintf("and %d more", n-maxProblems))
		}
		return nil
	})
	return problems, cutShort
}

// pageHeaders follows the page headers of the file from page 2 (after
// the two meta pages) to the high-water mark size (bytes), jumping over
// each page's overflow pages, and fails on a header whose overflow
// reaches past the end. A page whose header does not carry its own id
// (a free page's remains) is stepped over.
func pageHeaders(path string, pageSize, size int64) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	hwm := size / pageSize
	var hdr [16]byte
	for id := int64(2); id < hwm; {
		if _, err := f.ReadAt(hdr[:], id*pageSize); err != nil {
			return fmt.Errorf("page %d: %w", id, err)
		}
		if int64(binary.LittleEndian.Uint64(hdr[0:])) != id {
			id++
			continue
		}
		overflow := int64(binary.LittleEndian.Uint32(hdr[12:]))
		if overflow > hwm-id-1 {
			return fmt.Errorf("page %d claims %d overflow pages, past the end of the file (%d pages)", id, overflow, hwm)
		}
		id += 1 + overflow
	}
	return nil
}

// touchAll reads every key and value of every bucket, nested ones too,
// within a budget (a corrupted pointer can make pages a cycle).
func touchAll(tx *bolt.Tx) error {
	var sum uint32
	bud := newBudget(tx)
	defer bud.close()
	var walk func(b *bolt.Bucket, depth int) error
	walk = func(b *bolt.Bucket, depth int) error {
		if depth > maxDepth {
			return errCycle
		}
		if err := bud.pages.check(b); err != nil {
			return err
		}
		return b.ForEach(func(k, v []byte) error {
			bud.spend()
			sum = crc32.Update(sum, castagnoli, k)
			if v == nil {
				if err := bud.pages.inlineErr(b, k); err != nil {
					return fmt.Errorf("bucket %q: %w", k, err)
				}
				if sb := b.Bucket(k); sb != nil {
					return walk(sb, depth+1)
				}
				return nil
			}
			sum = crc32.Update(sum, castagnoli, v)
			return nil
		})
	}
	if err := bud.pages.check(tx.Cursor().Bucket()); err != nil {
		return err
	}
	return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
		if err := bud.pages.inlineErr(tx.Cursor().Bucket(), name); err != nil {
			return fmt.Errorf("bucket %q: %w", name, err)
		}
		return walk(b, 1)
	})
}

// prepare reads the format, sealing a file from before checksums in
// place, and returns the store's id (made on first open).
func (db *DB) prepare() (string, error) {
	var id string
	err := db.Update(func(tx *bolt.Tx) error {
		mb := tx.Bucket([]byte(metaBucket))
		if mb != nil {
			v, err := Unseal([]byte("format"), mb.Get([]byte("format")))
			if err != nil {
				return &DamageError{Path: db.Path(), Problems: []string{"the format record fails its checksum"}, Hint: hintRecover}
			}
			if f, _ := strconv.Atoi(string(v)); f != Format {
				return fmt.Errorf("store: %s has record format %q, this dpgate reads %d (written by a newer version?)", db.Path(), v, Format)
			}
			idv, err := Unseal([]byte("store_id"), mb.Get([]byte("store_id")))
			if err != nil {
				return &DamageError{Path: db.Path(), Problems: []string{"the store id record fails its checksum"}, Hint: hintRecover}
			}
			id = string(idv)
			return nil
		}
		if anySealed(tx) {
			// Of this format, its meta bucket lost to damage: sealing its
			// records again would hand readers their checksums as data.
			db.log.Warn("store: the meta bucket is missing but the records carry checksums (damage): a new one is written; records failing their checksum are kept aside as always", "file", db.Path())
		} else {
			n, err := sealAll(tx)
			if err != nil {
				return fmt.Errorf("store: seal records of %s: %w", db.Path(), err)
			}
			if n > 0 {
				db.log.Info("store: added checksums to the records of a store from an earlier version", "file", db.Path(), "records", n)
			}
		}
		id = newID()
		return writeMeta(tx, id)
	})
	return id, err
}

// sealAll seals every value of every bucket (a store from before Format 2).
func sealAll(tx *bolt.Tx) (int, error) {
	n := 0
	var walk func(b *bolt.Bucket) error
	walk = func(b *bolt.Bucket) error {
		type kv struct{ k, v []byte }
		var vals []kv
		var subs [][]byte
		b.ForEach(func(k, v []byte) error {
			if v == nil {
				subs = append(subs, slices.Clone(k))
			} else {
				vals = append(vals, kv{slices.Clone(k), Seal(k, v)})
			}
			return nil
		})
		for _, e := range vals { // not inside ForEach: bbolt forbids writes while iterating
			if err := b.Put(e.k, e.v); err != nil {
				return err
			}
		}
		n += len(vals)
		for _, s := range subs {
			if err := walk(b.Bucket(s)); err != nil {
				return err
			}
		}
		return nil
	}
	err := tx.ForEach(func(name []byte, b *bolt.Bucket) error { return walk(b) })
	return n, err
}

func newID() string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}

type markerInfo struct{ id, created string }

// readMarker returns nil when dir has no marker.
func readMarker(dir string) (*markerInfo, error) {
	b, err := os.ReadFile(filepath.Join(dir, MarkerFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	m := &markerInfo{id: "?", created: "?"}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, " "); ok {
			switch k {
			case "store_id":
				m.id = v
			case "created":
				m.created = v
			}
		}
	}
	return m, nil
}

func writeMarker(dir, id string) error {
	text := fmt.Sprintf("# dpgate: this data directory holds a store (%s); a start that finds it missing refuses\nstore_id %s\ncreated %s\n",
		FileName, id, time.Now().UTC().Format(time.RFC3339))
	tmp := filepath.Join(dir, MarkerFile+".tmp")
	if err := os.WriteFile(tmp, []byte(text), 0o600); err != nil {
		return fmt.Errorf("store: write marker: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, MarkerFile)); err != nil {
		return fmt.Errorf("store: write marker: %w", err)
	}
	return syncDir(dir)
}

// guard runs fn so that a panic, or a memory fault on a mapped page,
// inside bbolt becomes an error wrapping ErrDamaged for this one call
// instead of the end of the process. bbolt rolls back the transaction of
// a panicking Update or View on the way out.
func guard(op string, fn func() error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: %s: %v", ErrDamaged, op, r)
		}
	}()
	return fn()
}

// guarded is guard for calls on an open store: failures are counted and
// logged.
func (db *DB) guarded(op string, fn func() error) error {
	err := guard(op, fn)
	db.noteFailure(err)
	return err
}

// noteFailure counts and logs an error from guard.
func (db *DB) noteFailure(err error) {
	if err != nil && errors.Is(err, ErrDamaged) && !errors.As(err, new(*DamageError)) {
		db.failures.Add(1)
		db.log.Error("store: a call hit damaged data; it failed alone, the gateway goes on",
			"file", db.Path(), "err", err)
	}
}

// Close closes the file.
func (db *DB) Close() error { return db.bolt.Close() }

// Path is the database file.
func (db *DB) Path() string { return db.bolt.Path() }

// Stats are the store's counters since Open.
type Stats struct {
	CorruptRecords uint64 `json:"corrupt_records"` // records that failed their checksum
	Failures       uint64 `json:"failures"`        // calls that hit damaged pages
	Commits        uint64 `json:"commits"`         // write transactions committed (each two fdatasyncs)
	PageWrites     uint64 `json:"page_writes"`     // pages (or runs of pages) written by commits
}

// Stats returns the counters.
func (db *DB) Stats() Stats {
	bs := db.bolt.Stats()
	return Stats{CorruptRecords: db.corrupt.Load(), Failures: db.failures.Load(),
		Commits: uint64(max(db.lastTxID()-db.openTxID, 0)), PageWrites: uint64(bs.TxStats.GetWrite())}
}

// lastTxID is the id of the last committed write transaction.
func (db *DB) lastTxID() int {
	id := 0
	db.bolt.View(func(tx *bolt.Tx) error { id = tx.ID(); return nil })
	return id
}

// Corrupt counts and logs (once per record) a record that failed its
// checksum: path is its bucket path, key its key. Callers then skip it,
// and Quarantine it in a write transaction.
func (db *DB) Corrupt(path []string, key []byte) {
	qk := string(quarantineKey(path, key))
	db.seenMu.Lock()
	first := !db.seen[qk]
	db.seen[qk] = true
	db.seenMu.Unlock()
	if first {
		db.corrupt.Add(1)
		db.log.Error("store: a record fails its checksum; it is skipped and kept aside, never used",
			"file", db.Path(), "bucket", strings.Join(path, "/"), "key", string(key))
	}
}

func quarantineKey(path []string, key []byte) []byte {
	var b []byte
	for _, p := range path {
		b = append(append(b, p...), 0)
	}
	return append(b, key...)
}

// Quarantine moves the record at path/key, inside tx, to the quarantine
// bucket, where it is no longer read as data. A missing record is not an
// error.
func Quarantine(tx *bolt.Tx, path []string, key []byte) error {
	b := tx.Bucket([]byte(path[0]))
	for _, p := range path[1:] {
		if b == nil {
			return nil
		}
		b = b.Bucket([]byte(p))
	}
	if b == nil {
		return nil
	}
	v := b.Get(key)
	if v == nil {
		return nil
	}
	qb, err := tx.CreateBucketIfNotExists([]byte(QuarantineBucket))
	if err != nil {
		return err
	}
	qk := quarantineKey(path, key)
	if err := qb.Put(qk, Seal(qk, v)); err != nil {
		return err
	}
	return b.Delete(key)
}

// Quarantined counts, inside tx, the quarantined records under a bucket
// path (for a device's status: {"push_queue", device}).
func Quarantined(tx *bolt.Tx, path ...string) int {
	qb := tx.Bucket([]byte(QuarantineBucket))
	if qb == nil {
		return 0
	}
	prefix := quarantineKey(path, nil)
	n := 0
	c := qb.Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		n++
	}
	return n
}

// Put stores value under key in bucket, creating the bucket if needed.
func (db *DB) Put(bucket, key string, value []byte) error {
	return db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte(bucket))
		if err != nil {
			return err
		}
		return b.Put([]byte(key), Seal([]byte(key), value))
	})
}

// Get returns a copy of the value under key, ErrNotFound, or (counted and
// logged) ErrChecksum.
func (db *DB) Get(bucket, key string) ([]byte, error) {
	var out []byte
	err := db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte(bucket))
		if b == nil {
			return ErrNotFound
		}
		v := b.Get([]byte(key))
		if v == nil {
			return ErrNotFound
		}
		v, err := Unseal([]byte(key), v)
		if err != nil {
			db.Corrupt([]string{bucket}, []byte(key))
			return fmt.Errorf("%s/%s: %w", bucket, key, err)
		}
		out = slices.Clone(v)
		return nil
	})
	return out, err
}

// Delete removes key from bucket; a missing key is not an error.
func (db *DB) Delete(bucket, key string) error {
	return db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte(bucket))
		if b == nil {
			return nil
		}
		return b.Delete([]byte(key))
	})
}

// ForEach calls fn for every intact key in bucket in key order; a record
// that fails its checksum is skipped, counted and quarantined. The slices
// are valid only during the call.
func (db *DB) ForEach(bucket string, fn func(key, value []byte) error) error {
	var bad [][]byte
	err := db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte(bucket))
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			if v == nil {
				return nil // a nested bucket
			}
			val, err := Unseal(k, v)
			if err != nil {
				bad = append(bad, slices.Clone(k))
				return nil
			}
			return fn(k, val)
		})
	})
	db.QuarantineKeys([]string{bucket}, bad)
	return err
}

// QuarantineKeys counts (DB.Corrupt) and moves aside, in one commit, the
// records under path found failing their checksum in a read-only
// transaction.
func (db *DB) QuarantineKeys(path []string, keys [][]byte) {
	if len(keys) == 0 {
		return
	}
	for _, k := range keys {
		db.Corrupt(path, k)
	}
	db.Batch(func(tx *bolt.Tx) error {
		for _, k := range keys {
			if err := Quarantine(tx, path, k); err != nil {
				return err
			}
		}
		return nil
	})
}

// Update runs fn in one read-write transaction, for callers that need
// several changes to commit together (the push queue).
func (db *DB) Update(fn func(tx *bolt.Tx) error) error {
	return db.guarded("update", func() error { return db.bolt.Update(fn) })
}

// View runs fn in a read-only transaction.
func (db *DB) View(fn func(tx *bolt.Tx) error) error {
	return db.guarded("read", func() error { return db.bolt.View(fn) })
}

// Check verifies the file's internal consistency (bbolt's page checks).
func (db *DB) Check() error {
	if p, _ := consistency(db.bolt, db.Path()); len(p) > 0 {
		return &DamageError{Path: db.Path(), Problems: p, Hint: hintRecover}
	}
	return nil
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
// (or panic on damaged data) is not another's.
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
		err := guard("batch", func() error {
			return db.bolt.Update(func(tx *bolt.Tx) error {
				for _, c := range batch {
					if err := c.fn(tx); err != nil {
						return err
					}
				}
				return nil
			})
		})
		if err == nil || len(batch) == 1 {
			db.noteFailure(err)
			for _, c := range batch {
				c.err <- err
			}
			continue
		}
		for _, c := range batch {
			c.err <- db.Update(c.fn)
		}
	}
}
