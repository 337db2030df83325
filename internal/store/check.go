package store

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// This file is the operator's side of a damaged store: Inspect ("dpgate
// store check"), Recover ("dpgate store recover") and Reset ("dpgate
// store reset"). None of them needs the file to be sound: each bbolt call
// runs under guard, so damage ends a branch of the walk, not the command.

// Report is what Inspect found.
type Report struct {
	Path     string   `json:"path"`
	Size     int64    `json:"size_bytes"`
	Format   int      `json:"format"`   // 0: from before checksums (sealed on the next start)
	Problems []string `json:"problems"` // damage to the file's structure: it would be refused
	// Buckets counts records by top-level bucket.
	Buckets []BucketCount `json:"buckets"`
	// Unreadable are branches of the tree whose walk hit damage; the
	// records under them could not be counted.
	Unreadable []string      `json:"unreadable"`
	Took       time.Duration `json:"took_ns"`
}

// BucketCount is one top-level bucket of a Report.
type BucketCount struct {
	Name    string `json:"name"`
	Records int    `json:"records"`
	Corrupt int    `json:"corrupt"` // fail their checksum
}

// OK reports whether the store is sound: no structural problem, no
// unreadable branch, no record failing its checksum. (Records already in
// quarantine were dealt with and do not count.)
func (r Report) OK() bool {
	if len(r.Problems) > 0 || len(r.Unreadable) > 0 {
		return false
	}
	for _, b := range r.Buckets {
		if b.Corrupt > 0 {
			return false
		}
	}
	return true
}

// Inspect checks the store in dir without changing it: the file's
// structure (as Open does), then every record's checksum. It fails only
// when it cannot look (ErrLocked: a gateway has the file open; use the
// running gateway's GET /v1/store/check then).
func Inspect(dir string, lockTimeout time.Duration) (Report, error) {
	start := time.Now()
	path := filepath.Join(dir, FileName)
	r := Report{Path: path}
	st, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		m, _ := readMarker(dir)
		if m != nil {
			r.Problems = append(r.Problems, fmt.Sprintf("the file is missing, but %s says a store was created here at %s", MarkerFile, m.created))
		} else {
			r.Problems = append(r.Problems, "the file does not exist (no store has been created here)")
		}
		return r, nil
	}
	if err != nil {
		return r, err
	}
	r.Size = st.Size()
	if r.Size == 0 {
		r.Problems = append(r.Problems, "the file is empty (0 bytes)")
		return r, nil
	}
	if lockTimeout == 0 {
		lockTimeout = time.Second
	}
	b, err := openReadOnly(path, lockTimeout)
	if errors.Is(err, ErrLocked) {
		return r, err
	}
	if err != nil {
		r.Problems = append(r.Problems, err.Error())
		return r, nil
	}
	defer b.Close()
	inspect(b, &r, lockTimeout)
	r.Took = time.Since(start)
	return r, nil
}

// Inspect checks an open store as the function Inspect does a file.
func (db *DB) Inspect() Report {
	start := time.Now()
	r := Report{Path: db.Path()}
	if st, err := os.Stat(db.Path()); err == nil {
		r.Size = st.Size()
	}
	inspect(db.bolt, &r, 0)
	r.Took = time.Since(start)
	return r
}

// openReadOnly opens a file that may be damaged for reading: shared lock
// (ErrLocked while a gateway has it), no freelist read, panics caught.
func openReadOnly(path string, lockTimeout time.Duration) (*bolt.DB, error) {
	var b *bolt.DB
	err := guard("open", func() error {
		var err error
		b, err = bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: lockTimeout})
		return err
	})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("%w: %s", ErrLocked, path)
	}
	return b, err
}

// inspect fills r from b. A file read offline (lockTimeout > 0, for the
// child's shared lock) has bbolt's check run in a child process, as Open
// does; the gateway's own open store (0) passed that check when it was
// opened and is checked in place.
func inspect(b *bolt.DB, r *Report, lockTimeout time.Duration) {
	var problems []string
	var cutShort bool
	if lockTimeout > 0 {
		var err error
		if problems, cutShort, err = isolatedConsistency(r.Path, lockTimeout); err != nil {
			problems = append(problems, err.Error())
		}
	} else {
		problems, cutShort = consistency(b, r.Path)
	}
	r.Problems = append(r.Problems, problems...)
	if cutShort {
		return // pages past the end would fault: walk nothing
	}
	counts := map[string]*BucketCount{}
	err := guard("read", func() error {
		return b.View(func(tx *bolt.Tx) error {
			r.Format = readFormat(tx)
			walkTx(tx, func(path []string, k, v []byte) {
				c := counts[path[0]]
				if c == nil {
					c = &BucketCount{Name: path[0]}
					counts[path[0]] = c
				}
				c.Records++
				if r.Format == Format {
					if _, err := Unseal(k, v); err != nil {
						c.Corrupt++
					}
				}
			}, &r.Unreadable)
			return nil
		})
	})
	if err != nil {
		r.Unreadable = append(r.Unreadable, err.Error())
	}
	for _, c := range counts {
		r.Buckets = append(r.Buckets, *c)
	}
	sort.Slice(r.Buckets, func(i, j int) bool { return r.Buckets[i].Name < r.Buckets[j].Name })
}

// readFormat is the file's record format, 0 before the meta bucket.
func readFormat(tx *bolt.Tx) int {
	mb := tx.Bucket([]byte(metaBucket))
	if mb == nil {
		return 0
	}
	v, err := Unseal([]byte("format"), mb.Get([]byte("format")))
	if err != nil {
		return -1
	}
	var f int
	fmt.Sscan(string(v), &f)
	return f
}

// walkTx calls visit for every value of every bucket of tx, depth first,
// with the bucket path. Damage met while walking a bucket ends that
// bucket's walk (its path and the error go to unreadable); the walk goes
// on with the next.
func walkTx(tx *bolt.Tx, visit func(path []string, k, v []byte), unreadable *[]string) {
	var names [][]byte
	budget := newBudget(tx)
	defer budget.close()
	if err := guard("walk", func() error {
		if err := budget.pages.check(tx.Cursor().Bucket()); err != nil {
			return err
		}
		return tx.ForEach(func(name []byte, _ *bolt.Bucket) error {
			budget.spend()
			names = append(names, slices.Clone(name))
			return nil
		})
	}); err != nil {
		*unreadable = append(*unreadable, "the list of buckets: "+err.Error())
	}
	for _, n := range names {
		var b *bolt.Bucket
		if err := budget.pages.inlineErr(tx.Cursor().Bucket(), n); err != nil {
			*unreadable = append(*unreadable, fmt.Sprintf("%s: %v", n, err))
			continue
		}
		if err := guard("walk", func() error { b = tx.Bucket(n); return nil }); err != nil || b == nil {
			*unreadable = append(*unreadable, fmt.Sprintf("%s: %v", n, err))
			continue
		}
		walkBucket(b, []string{string(n)}, visit, unreadable, budget)
	}
}

// budget bounds a walk of a damaged file: pages whose pointers were
// corrupted into a cycle would otherwise be walked forever (or recurse
// until the stack limit, a fatal error). No file holds more elements than
// it has 16-byte element headers, nor buckets nested deeper than ours.
// Its pageTree checks each bucket's pages before a cursor walks them,
// since a cursor's descent to the first element is not an element.
type budget struct {
	left  int
	pages *pageTree
}

const maxDepth = 16

// newBudget is a walk's budget; close it when the walk is done.
func newBudget(tx *bolt.Tx) *budget {
	return &budget{left: int(tx.Size()/16) + 1024, pages: newPageTree(tx)}
}

func (b *budget) close() { b.pages.close() }

// errCycle is what a walk that ran out of its budget reports.
var errCycle = errors.New("more records than the file can hold: its pages point in a cycle")

func (b *budget) spend() {
	if b.left--; b.left < 0 {
		panic(errCycle) // under guard: this branch is unreadable
	}
}

func walkBucket(b *bolt.Bucket, path []string, visit func(path []string, k, v []byte), unreadable *[]string, bud *budget) {
	if len(path) > maxDepth {
		*unreadable = append(*unreadable, fmt.Sprintf("%s: buckets nested %d deep: %v", strings.Join(path[:3], "/"), len(path), errCycle))
		return
	}
	var subs [][]byte
	err := guard("walk", func() error {
		if err := bud.pages.check(b); err != nil {
			return err
		}
		c := b.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			bud.spend()
			if v == nil {
				subs = append(subs, slices.Clone(k))
				continue
			}
			visit(path, k, v)
		}
		return nil
	})
	if err != nil {
		*unreadable = append(*unreadable, fmt.Sprintf("%s: %v", strings.Join(path, "/"), err))
	}
	for _, s := range subs {
		var sb *bolt.Bucket
		sub := append(slices.Clone(path), string(s))
		if err := bud.pages.inlineErr(b, s); err != nil {
			*unreadable = append(*unreadable, fmt.Sprintf("%s: %v", strings.Join(sub, "/"), err))
			continue
		}
		if err := guard("walk", func() error { sb = b.Bucket(s); return nil }); err != nil || sb == nil {
			*unreadable = append(*unreadable, fmt.Sprintf("%s: %v", strings.Join(sub, "/"), err))
			continue
		}
		walkBucket(sb, sub, visit, unreadable, bud)
	}
}

// RecoverReport is what Recover did.
type RecoverReport struct {
	// Damaged is where the old file is kept now: dpgate.db.damaged-<time>,
	// or dpgate.db.old-<time> when nothing in it was damaged (Sound).
	Damaged    string         `json:"damaged"`
	Recovered  string         `json:"recovered"` // the new file (dpgate.db)
	Kept       map[string]int `json:"kept"`      // records copied, by top-level bucket
	Lost       map[string]int `json:"lost"`      // records that failed their checksum, by bucket
	Unreadable []string       `json:"unreadable"`
	// Sound: every record was kept (none failed its checksum, no branch
	// was unreadable); the store needed no recovery.
	Sound bool `json:"sound"`
}

// Recover copies every readable record of the store in dir into a new
// file, moves the damaged file aside (dpgate.db.damaged-<time>, or
// dpgate.db.old-<time> when nothing was damaged) and puts the new one in
// its place. Records that fail their checksum are left
// behind and counted; a branch of the tree that cannot be read is named.
// The gateway must be stopped (ErrLocked otherwise).
func Recover(dir string, lockTimeout time.Duration) (RecoverReport, error) {
	path := filepath.Join(dir, FileName)
	rep := RecoverReport{Kept: map[string]int{}, Lost: map[string]int{}}
	if lockTimeout == 0 {
		lockTimeout = time.Second
	}
	st, err := os.Stat(path)
	if err != nil {
		return rep, fmt.Errorf("store: %w", err)
	}
	if st.Size() == 0 {
		return rep, fmt.Errorf("store: %s is empty (0 bytes): there is nothing to recover; restore it from a backup or run \"dpgate store reset\"", path)
	}
	old, err := openReadOnly(path, lockTimeout)
	if errors.Is(err, ErrLocked) {
		return rep, fmt.Errorf("%w (stop the gateway first)", err)
	}
	if err != nil {
		return rep, fmt.Errorf("store: %s cannot be opened at all (%v): nothing in it can be read; restore it from a backup or run \"dpgate store reset\"", path, err)
	}
	tmp := path + ".recovering"
	os.Remove(tmp)
	nb, err := bolt.Open(tmp, 0o600, &bolt.Options{Timeout: lockTimeout})
	if err != nil {
		old.Close()
		return rep, fmt.Errorf("store: %w", err)
	}
	err = copyRecords(old, nb, st.Size() < guardedSize(old), &rep)
	old.Close()
	id := newID()
	if err == nil {
		err = nb.Update(func(tx *bolt.Tx) error { return writeMeta(tx, id) })
	}
	if cerr := nb.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return rep, fmt.Errorf("store: recover: %w", err)
	}
	rep.Sound = len(rep.Unreadable) == 0
	for _, n := range rep.Lost {
		rep.Sound = rep.Sound && n == 0
	}
	kind := ".damaged-"
	if rep.Sound {
		kind = ".old-" // as store reset names it: nothing in it was damaged
	}
	rep.Damaged = path + kind + time.Now().UTC().Format("20060102T150405Z")
	if err := os.Rename(path, rep.Damaged); err != nil {
		return rep, fmt.Errorf("store: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return rep, fmt.Errorf("store: %w", err)
	}
	rep.Recovered = path
	return rep, writeMarker(dir, id)
}

// guardedSize is the size the file's meta page claims, 0 if unreadable.
func guardedSize(b *bolt.DB) int64 {
	var n int64
	guard("size", func() error {
		return b.View(func(tx *bolt.Tx) error { n = tx.Size(); return nil })
	})
	return n
}

// copyRecords walks old and writes each intact record into nb, a few
// thousand per transaction. In a file cut short, pages past the end are
// not mapped and reading them faults: guard turns that into an
// unreadable branch like any other damage.
func copyRecords(old, nb *bolt.DB, cutShort bool, rep *RecoverReport) error {
	type rec struct {
		path []string
		k, v []byte
	}
	var buf []rec
	flush := func() error {
		err := nb.Update(func(tx *bolt.Tx) error {
			for _, r := range buf {
				b, err := tx.CreateBucketIfNotExists([]byte(r.path[0]))
				if err != nil {
					return err
				}
				for _, p := range r.path[1:] {
					if b, err = b.CreateBucketIfNotExists([]byte(p)); err != nil {
						return err
					}
				}
				if err := b.Put(r.k, r.v); err != nil {
					return err
				}
			}
			return nil
		})
		buf = buf[:0]
		return err
	}
	var werr error
	if cutShort {
		rep.Unreadable = append(rep.Unreadable, "the file is cut short: records on the missing pages are lost")
	}
	err := guard("read", func() error {
		return old.View(func(tx *bolt.Tx) error {
			// No meta bucket: a store from before checksums, or one that
			// lost the bucket to damage (then its records are sealed).
			legacy := readFormat(tx) == 0 && !anySealed(tx)
			walkTx(tx, func(path []string, k, v []byte) {
				if werr != nil || path[0] == metaBucket {
					return
				}
				var sealed []byte
				if legacy {
					sealed = Seal(k, v) // from before checksums: nothing to verify
				} else if _, err := Unseal(k, v); err != nil {
					rep.Lost[path[0]]++
					return
				} else {
					sealed = slices.Clone(v)
				}
				buf = append(buf, rec{slices.Clone(path), slices.Clone(k), sealed})
				rep.Kept[path[0]]++
				if len(buf) >= 5000 {
					werr = flush()
				}
			}, &rep.Unreadable)
			return nil
		})
	})
	if err != nil {
		rep.Unreadable = append(rep.Unreadable, err.Error())
	}
	if werr != nil {
		return werr
	}
	return flush()
}

func writeMeta(tx *bolt.Tx, id string) error {
	mb, err := tx.CreateBucketIfNotExists([]byte(metaBucket))
	if err != nil {
		return err
	}
	if err := mb.Put([]byte("format"), Seal([]byte("format"), []byte(fmt.Sprint(Format)))); err != nil {
		return err
	}
	return mb.Put([]byte("store_id"), Seal([]byte("store_id"), []byte(id)))
}

// Reset makes dir start over with an empty store: the current file, if
// any, is moved aside (dpgate.db.old-<time>, returned) and the marker
// removed, then a new store is created. Journal files (Journal) go
// aside too, renamed the same way. It is the operator's explicit
// choice that Open refuses to make on its own. The gateway must be
// stopped (ErrLocked otherwise).
func Reset(dir string) (aside string, err error) {
	path := filepath.Join(dir, FileName)
	unlock, err := lockFile(path)
	if err != nil {
		return "", err
	}
	st, err := os.Stat(path)
	switch {
	case err == nil && st.Size() > 0:
		aside = path + ".old-" + time.Now().UTC().Format("20060102T150405Z")
		err = os.Rename(path, aside)
	case err == nil:
		err = os.Remove(path)
	case errors.Is(err, fs.ErrNotExist):
		err = nil
	}
	if err == nil {
		// The journals hold writes for the old file's tree: aside with it.
		var journals []string
		journals, err = filepath.Glob(filepath.Join(dir, "*"+JournalSuffix))
		stamp := time.Now().UTC().Format("20060102T150405Z")
		for _, j := range journals {
			if err == nil {
				err = os.Rename(j, j+".old-"+stamp)
			}
		}
	}
	unlock()
	if err != nil {
		return "", fmt.Errorf("store: reset: %w", err)
	}
	if err := os.Remove(filepath.Join(dir, MarkerFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return aside, fmt.Errorf("store: reset: %w", err)
	}
	db, err := Open(dir, Options{})
	if err != nil {
		return aside, err
	}
	return aside, db.Close()
}
