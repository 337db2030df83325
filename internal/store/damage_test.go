package store

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// fill writes a store like a gateway's: 20 device queues of 50 records of
// 300 bytes, and a flat bucket; it returns the file's path.
func fill(t *testing.T, dir string) string {
	t.Helper()
	db, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		qb, err := tx.CreateBucketIfNotExists([]byte("push_queue"))
		if err != nil {
			return err
		}
		for d := range 20 {
			b, err := qb.CreateBucketIfNotExists(fmt.Appendf(nil, "dev-%d", d))
			if err != nil {
				return err
			}
			for i := range 50 {
				k := fmt.Appendf(nil, "%08d", i)
				if err := b.Put(k, Seal(k, bytes.Repeat([]byte{byte(i)}, 300))); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		if err := db.Put("agent_certs", fmt.Sprint("cert-", i), []byte("PAYLOAD-"+fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	p := db.Path()
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}

func writeAt(t *testing.T, path string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// alter changes the byte at off in every copy of text in the file: bbolt
// writes pages anew, so freed pages hold older copies too.
func alter(t *testing.T, path, text string, off int, b byte) {
	t.Helper()
	raw, _ := os.ReadFile(path)
	n := 0
	for i := 0; ; n++ {
		j := bytes.Index(raw[i:], []byte(text))
		if j < 0 {
			break
		}
		writeAt(t, path, int64(i+j+off), []byte{b})
		i += j + len(text)
	}
	if n == 0 {
		t.Fatalf("%q not found in the file", text)
	}
}

// TestOpenRefusesDamagedFiles: each damage seen by hand (a file cut to
// 12,288 or 100,000 bytes, page headers overwritten, random bytes in data
// pages, an empty file) is refused by Open with an error naming the file
// and the next step, instead of a panic or an empty start.
func TestOpenRefusesDamagedFiles(t *testing.T) {
	const page = 4096
	for _, c := range []struct {
		name   string
		damage func(t *testing.T, path string)
		want   string
	}{
		{"truncated to 12288", func(t *testing.T, p string) { os.Truncate(p, 12288) }, "cut short"},
		{"truncated to 100000", func(t *testing.T, p string) { os.Truncate(p, 100000) }, "cut short"},
		{"page headers", func(t *testing.T, p string) {
			for pg := int64(2); pg < 40; pg++ {
				writeAt(t, p, pg*page, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0x7f})
			}
		}, "dpgate store recover"},
		{"random bytes in data pages", func(t *testing.T, p string) {
			st, _ := os.Stat(p)
			r := rand.New(rand.NewSource(1))
			for range 200 {
				writeAt(t, p, 4*page+r.Int63n(st.Size()-4*page), []byte{byte(r.Int())})
			}
		}, "dpgate store recover"},
		{"both meta pages", func(t *testing.T, p string) {
			writeAt(t, p, 40, bytes.Repeat([]byte{0xAA}, 8)) // the root page ids
			writeAt(t, p, page+40, bytes.Repeat([]byte{0xAA}, 8))
		}, "dpgate store recover"},
		{"empty", func(t *testing.T, p string) { os.Truncate(p, 0) }, "empty (0 bytes)"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel() // Open checks in a child process: two at a time on two cores
			dir := t.TempDir()
			path := fill(t, dir)
			c.damage(t, path)
			db, err := Open(dir, Options{})
			if err == nil {
				db.Close()
				t.Fatal("Open accepted the damaged file")
			}
			if !errors.Is(err, ErrDamaged) {
				t.Errorf("error %v does not wrap ErrDamaged", err)
			}
			for _, want := range []string{path, c.want} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
			}
			// The check command reports it too, without changing the file.
			r, err := Inspect(dir, 0)
			if err != nil {
				t.Fatal(err)
			}
			if r.OK() {
				t.Errorf("Inspect found nothing wrong: %+v", r)
			}
		})
	}
}

// TestOpenRefusesVanishedStore: a data directory whose marker says it
// held a store, and whose store is gone, is refused; Reset is the way to
// start over, and then the store opens empty.
func TestOpenRefusesVanishedStore(t *testing.T) {
	dir := t.TempDir()
	path := fill(t, dir)
	if _, err := os.Stat(filepath.Join(dir, MarkerFile)); err != nil {
		t.Fatalf("no marker after the first start: %v", err)
	}
	os.Remove(path)
	_, err := Open(dir, Options{})
	if !errors.Is(err, ErrMissing) || !strings.Contains(err.Error(), "dpgate store reset") {
		t.Fatalf("Open of a vanished store: %v, want ErrMissing naming dpgate store reset", err)
	}
	if _, err := os.Stat(path); err == nil {
		t.Fatal("Open re-created the vanished file")
	}
	if _, err := Reset(dir); err != nil {
		t.Fatal(err)
	}
	db, err := Open(dir, Options{})
	if err != nil {
		t.Fatalf("Open after Reset: %v", err)
	}
	db.Close()
}

// TestChecksumCatchesAlteredValue: one byte of a value changed in the
// file passes bbolt's checks but not the record's checksum: Get refuses
// it, ForEach skips it and moves it to the quarantine, counted once.
func TestChecksumCatchesAlteredValue(t *testing.T) {
	dir := t.TempDir()
	path := fill(t, dir)
	alter(t, path, "PAYLOAD-7", 3, 'X')

	db, err := Open(dir, Options{})
	if err != nil {
		t.Fatalf("Open: %v (an altered value is not a structural problem)", err)
	}
	defer db.Close()
	if _, err := db.Get("agent_certs", "cert-7"); !errors.Is(err, ErrChecksum) {
		t.Errorf("Get of the altered record: %v, want ErrChecksum", err)
	}
	var seen []string
	db.ForEach("agent_certs", func(k, v []byte) error { seen = append(seen, string(v)); return nil })
	if len(seen) != 9 || strings.Contains(strings.Join(seen, ","), "PAYXOAD") {
		t.Errorf("ForEach gave %d records %v, want the 9 intact ones", len(seen), seen)
	}
	if s := db.Stats(); s.CorruptRecords != 1 {
		t.Errorf("corrupt records counted %d, want 1", s.CorruptRecords)
	}
	var q int
	db.View(func(tx *bolt.Tx) error { q = Quarantined(tx, "agent_certs"); return nil })
	if q != 1 {
		t.Errorf("quarantined %d, want 1", q)
	}
	r := db.Inspect()
	if !r.OK() {
		t.Errorf("after the quarantine the store should check clean: %+v", r)
	}
}

// TestGuardTurnsPanicsIntoErrors: a panic inside a transaction (what a
// damaged page does deep in bbolt) fails that call only; the store keeps
// working, writes included.
func TestGuardTurnsPanicsIntoErrors(t *testing.T) {
	db, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.View(func(tx *bolt.Tx) error {
		var s []byte
		_ = s[5] // index out of range, like bbolt's on a bad page
		return nil
	})
	if !errors.Is(err, ErrDamaged) {
		t.Fatalf("View with a panic: %v, want ErrDamaged", err)
	}
	if err := db.Batch(func(tx *bolt.Tx) error { panic("bad page") }); !errors.Is(err, ErrDamaged) {
		t.Fatalf("Batch with a panic: %v, want ErrDamaged", err)
	}
	if err := db.Put("b", "k", []byte("v")); err != nil {
		t.Fatalf("Put after the panics: %v", err)
	}
	if v, err := db.Get("b", "k"); err != nil || string(v) != "v" {
		t.Fatalf("Get after the panics: %q, %v", v, err)
	}
	if s := db.Stats(); s.Failures != 2 {
		t.Errorf("failures counted %d, want 2", s.Failures)
	}
}

// TestRecoverKeepsReadableRecords: a file with damaged data pages is
// recovered into a new one that opens and checks clean; the damaged file
// stays beside it and the counts add up to what was written.
func TestRecoverKeepsReadableRecords(t *testing.T) {
	dir := t.TempDir()
	path := fill(t, dir)
	alter(t, path, "PAYLOAD-3", 1, '#') // one record fails its checksum
	// and one page of a device queue is overwritten with garbage
	writeAt(t, path, 10*4096, bytes.Repeat([]byte{0xEE}, 4096))
	if _, err := Open(dir, Options{}); err == nil {
		t.Fatal("Open accepted the damaged file")
	}
	rep, err := Recover(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("recover: %+v", rep)
	if _, err := os.Stat(rep.Damaged); err != nil || rep.Sound || !strings.Contains(rep.Damaged, ".damaged-") {
		t.Errorf("the damaged file is not kept as damaged (sound %v, %s): %v", rep.Sound, rep.Damaged, err)
	}
	if rep.Kept["agent_certs"] != 9 || rep.Lost["agent_certs"] != 1 {
		t.Errorf("agent_certs kept %d lost %d, want 9 and 1", rep.Kept["agent_certs"], rep.Lost["agent_certs"])
	}
	if k := rep.Kept["push_queue"]; k >= 1000 || k < 900 {
		t.Errorf("push_queue kept %d of 1000, want most but not all (one page of about 13 records is garbage)", k)
	}
	db, err := Open(dir, Options{})
	if err != nil {
		t.Fatalf("Open of the recovered store: %v", err)
	}
	defer db.Close()
	if err := db.Check(); err != nil {
		t.Errorf("recovered store: %v", err)
	}
	if v, err := db.Get("agent_certs", "cert-4"); err != nil || string(v) != "PAYLOAD-4" {
		t.Errorf("cert-4 after recover: %q, %v", v, err)
	}
}

// TestRecoverOfASoundStore: recover run on a store with nothing damaged
// (by mistake, or to be sure) keeps every record and says so; the old
// file is kept as dpgate.db.old-<time>, not named damaged as it was.
func TestRecoverOfASoundStore(t *testing.T) {
	dir := t.TempDir()
	fill(t, dir)
	rep, err := Recover(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Sound || !strings.Contains(rep.Damaged, ".old-") || rep.Kept["agent_certs"] != 10 {
		t.Errorf("recover of a sound store: sound %v, old file %s, agent_certs kept %d; want sound, .old-, 10", rep.Sound, rep.Damaged, rep.Kept["agent_certs"])
	}
	if _, err := os.Stat(rep.Damaged); err != nil {
		t.Errorf("the old file is not kept: %v", err)
	}
}

// TestLegacyStoreIsSealed: a file written before checksums (plain bbolt
// values, no meta bucket) opens, its values gain checksums and read back
// unchanged.
func TestLegacyStoreIsSealed(t *testing.T) {
	dir := t.TempDir()
	b, err := bolt.Open(filepath.Join(dir, FileName), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	b.Update(func(tx *bolt.Tx) error {
		bk, _ := tx.CreateBucket([]byte("agent_certs"))
		bk.Put([]byte("a"), []byte("old-value"))
		qb, _ := tx.CreateBucket([]byte("push_queue"))
		db, _ := qb.CreateBucket([]byte("dev"))
		return db.Put([]byte("k"), []byte("queued"))
	})
	b.Close()
	db, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if v, err := db.Get("agent_certs", "a"); err != nil || string(v) != "old-value" {
		t.Errorf("legacy value after sealing: %q, %v", v, err)
	}
	db.View(func(tx *bolt.Tx) error {
		v, err := Unseal([]byte("k"), tx.Bucket([]byte("push_queue")).Bucket([]byte("dev")).Get([]byte("k")))
		if err != nil || string(v) != "queued" {
			t.Errorf("nested legacy value after sealing: %q, %v", v, err)
		}
		return nil
	})
}

// TestLostMetaBucketSealsNothingTwice: a store whose meta bucket is gone
// (a flipped byte in its name) looks like one from before checksums, but
// its records are sealed already. Open and Recover sealed them again, and
// every reader then saw four bytes of garbage after each value (the chaos
// test's bitflip: "device dev-001: invalid character after top-level
// value", and the node never started again). An unsealed record among
// sealed ones is then damage, not a legacy record: never used as data
// (TestLegacyStoreIsSealed: a store with no sealed record is sealed).
func TestLostMetaBucketSealsNothingTwice(t *testing.T) {
	for _, way := range []string{"open", "recover"} {
		t.Run(way, func(t *testing.T) {
			dir := t.TempDir()
			db, err := Open(dir, Options{})
			if err != nil {
				t.Fatal(err)
			}
			db.Put("devices", "dev-1", []byte(`{"id":"dev-1"}`))
			db.Close()
			b, err := bolt.Open(filepath.Join(dir, FileName), 0o600, nil)
			if err != nil {
				t.Fatal(err)
			}
			b.Update(func(tx *bolt.Tx) error {
				bk, _ := tx.CreateBucketIfNotExists([]byte("agent_certs"))
				bk.Put([]byte("a"), []byte("unsealed")) // a damaged record, or a legacy one
				return tx.DeleteBucket([]byte(metaBucket))
			})
			b.Close()
			if way == "recover" {
				if _, err := Recover(dir, time.Second); err != nil {
					t.Fatal(err)
				}
			}
			if db, err = Open(dir, Options{}); err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			if v, err := db.Get("devices", "dev-1"); err != nil || string(v) != `{"id":"dev-1"}` {
				t.Errorf("a sealed record after the meta bucket was lost: %q, %v; want it unchanged", v, err)
			}
			if v, err := db.Get("agent_certs", "a"); err == nil {
				t.Errorf("an unsealed record among sealed ones read as %q; want it treated as damaged", v)
			}
		})
	}
}

// TestOpenSurvivesABucketHeaderPastTheMapping: an inline sub-bucket whose
// value length was corrupted makes bbolt read far past its memory map.
// bbolt's Tx.Check walks in a goroutine of its own, where that is a fatal
// fault ("unexpected fault address", exit 2, found by the chaos harness
// after 64 flipped bytes), not a panic; Open must refuse it as damage.
func TestOpenSurvivesABucketHeaderPastTheMapping(t *testing.T) {
	dir := t.TempDir()
	patched := damageBucketElements(t, dir, func(tx *bolt.Tx) {
		b, _ := tx.CreateBucketIfNotExists([]byte("parent"))
		for n := 1; n <= 8; n++ { // names of every length mod 8: some values are unaligned, which bbolt copies
			sb, _ := b.CreateBucketIfNotExists([]byte(strings.Repeat("c", n)))
			sb.Put([]byte("k"), Seal([]byte("k"), []byte("v")))
		}
	}, func(data []byte, page, el, pos, ksize int) bool {
		binary.LittleEndian.PutUint32(data[el+12:], 1<<26) // vsize: 64 MiB, far past the map
		return true
	})
	if patched == 0 {
		t.Fatal("found no inline bucket element to damage")
	}
	t.Logf("patched %d bucket elements", patched)
	_, err := Open(dir, Options{})
	var de *DamageError
	if !errors.As(err, &de) {
		t.Fatalf("Open of a file with a bucket header past the mapping: %v, want a DamageError", err)
	}
	t.Logf("refused: %v", err)
}

// TestDamagedPagesInACycle: a sub-bucket whose root pointer was corrupted
// to the page holding the sub-bucket itself makes every walk go round for
// ever (and bbolt's Check recurse until the stack limit, a fatal error).
// Open refuses it, and Recover ends, keeping what it can read.
func TestDamagedPagesInACycle(t *testing.T) {
	dir := t.TempDir()
	patched := damageBucketElements(t, dir, func(tx *bolt.Tx) {
		b, _ := tx.CreateBucketIfNotExists([]byte("parent"))
		b.Put([]byte("flat"), Seal([]byte("flat"), []byte("kept")))
		sb, _ := b.CreateBucketIfNotExists([]byte("child"))
		for i := range 200 { // too big to be inline: a page of its own
			k := fmt.Appendf(nil, "k%03d", i)
			sb.Put(k, Seal(k, bytes.Repeat([]byte("x"), 100)))
		}
	}, func(data []byte, page, el, pos, ksize int) bool {
		if string(data[el+pos:el+pos+ksize]) != "child" {
			return false
		}
		binary.LittleEndian.PutUint64(data[el+pos+ksize:], uint64(page)) // root: this very page
		return true
	})
	if patched == 0 {
		t.Fatal("found no sub-bucket to damage")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, err := Open(dir, Options{})
		var de *DamageError
		if !errors.As(err, &de) || !strings.Contains(err.Error(), "cycle") {
			t.Errorf("Open of a store whose pages form a cycle: %v, want a DamageError naming the cycle", err)
		}
		rep, err := Recover(dir, time.Second)
		if err != nil || rep.Kept["parent"] < 1 || len(rep.Unreadable) == 0 {
			t.Errorf("Recover: %+v, %v; want the flat record kept and the cycle reported unreadable", rep, err)
		}
	}()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("Open or Recover of a store whose pages form a cycle did not end within 60 s")
	}
}

// bitflipSeeds is how many randomly damaged files TestOpenSurvivesRandomBitflips
// opens (each Open checks in a child process: 20 ms, or a second under
// -race unless GORACE has atexit_sleep_ms=0, which ./scripts/test.sh
// sets); the chaos harness's bitflip fault goes on where this stops.
const bitflipSeeds = 64

// TestOpenSurvivesRandomBitflips: a store with 64 random bits flipped past
// its meta pages, as the chaos harness does to a node while it is down,
// bitflipSeeds times. Open either serves it (the flips hit nothing it
// reads) or refuses it as damaged, within a bound: before, some seeds made
// bbolt's Check count an overflow to four billion (seed 26: a hang), fault
// past its memory map or recurse for ever, all in its own goroutine, so
// the gateway hung or crashed at every start.
func TestOpenSurvivesRandomBitflips(t *testing.T) {
	base := t.TempDir()
	src := fill(t, filepath.Join(base, "src"))
	data, _ := os.ReadFile(src)
	marker, _ := os.ReadFile(filepath.Join(base, "src", MarkerFile))
	var refused atomic.Int32
	t.Run("seeds", func(t *testing.T) {
		for seed := int64(1); seed <= bitflipSeeds; seed++ {
			t.Run(fmt.Sprint(seed), func(t *testing.T) {
				t.Parallel() // each Open checks in a child process: two at a time on two cores
				dir := filepath.Join(base, fmt.Sprint(seed))
				os.MkdirAll(dir, 0o700)
				b := bytes.Clone(data)
				r := rand.New(rand.NewSource(seed))
				for range 64 {
					off := 16384 + r.Int63n(int64(len(b)-16384))
					b[off] ^= byte(1 << r.Intn(8))
				}
				os.WriteFile(filepath.Join(dir, FileName), b, 0o600)
				os.WriteFile(filepath.Join(dir, MarkerFile), marker, 0o600)
				done := make(chan error, 1)
				go func() {
					db, err := Open(dir, Options{})
					if err == nil {
						db.Close()
					}
					done <- err
				}()
				select {
				case err := <-done:
					var de *DamageError
					if err != nil && !errors.As(err, &de) {
						t.Errorf("seed %d: %v, want a DamageError or none", seed, err)
					}
					if err != nil {
						refused.Add(1)
					}
				case <-time.After(2 * time.Minute):
					t.Fatalf("seed %d: Open did not end within 2 minutes", seed)
				}
				os.RemoveAll(dir)
			})
		}
	})
	t.Logf("%d of %d damaged files refused, the rest served", refused.Load(), bitflipSeeds)
}

// damageBucketElements makes a store in dir with fill, then calls patch
// on every sub-bucket element of its leaf pages (page number, the
// element's offset in the file, its key's position and size) and writes
// the file back; it returns how many patch changed.
func damageBucketElements(t *testing.T, dir string, fill func(*bolt.Tx), patch func(data []byte, page, el, pos, ksize int) bool) int {
	t.Helper()
	db, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	db.Update(func(tx *bolt.Tx) error { fill(tx); return nil })
	db.Close()
	file := filepath.Join(dir, FileName)
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	patched := 0
	const pageSize, leafPage, bucketLeaf = 4096, 0x02, 0x01
	for p := 2 * pageSize; p+pageSize <= len(data); p += pageSize {
		if binary.LittleEndian.Uint16(data[p+8:]) != leafPage {
			continue
		}
		for i := range int(binary.LittleEndian.Uint16(data[p+10:])) {
			el := p + 16 + 16*i
			pos, ksize := int(binary.LittleEndian.Uint32(data[el+4:])), int(binary.LittleEndian.Uint32(data[el+8:]))
			if binary.LittleEndian.Uint32(data[el:])&bucketLeaf != 0 && patch(data, p/pageSize, el, pos, ksize) {
				patched++
			}
		}
	}
	os.WriteFile(file, data, 0o600)
	return patched
}

// TestInlinePagesWithBadFlags: a store the chaos harness's bitflip fault
// left behind (testdata/chaos-inline-flags.db.gz, 128 KiB): the inline
// pages of two devices' queues carry flags 0x1002 and 0x12, which bbolt
// takes for branch pages, and a cursor on them descended for ever, its
// stack growing: `dpgate store recover` reached 8 GiB in two minutes and
// `dpgate store check` never ended. Now both end at once and name the
// two buckets; the rest is kept.
func TestInlinePagesWithBadFlags(t *testing.T) {
	gz, err := os.Open("testdata/chaos-inline-flags.db.gz")
	if err != nil {
		t.Fatal(err)
	}
	defer gz.Close()
	zr, err := gzip.NewReader(gz)
	if err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, FileName), data, 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { // bounded below: before the fix it never returned
		defer close(done)
		rep, err := Inspect(dir, time.Second)
		if err != nil || !slices.ContainsFunc(rep.Unreadable, func(u string) bool { return strings.Contains(u, "dev-018: its inline page") }) {
			t.Errorf("Inspect: unreadable %q, %v; want push_queue/dev-018's inline page named", rep.Unreadable, err)
		}
		if _, err := Open(dir, Options{}); !errors.Is(err, ErrDamaged) {
			t.Errorf("Open: %v, want ErrDamaged", err)
		}
		rr, err := Recover(dir, time.Second)
		if err != nil || rr.Kept["devices"] < 50 || len(rr.Unreadable) != 3 {
			t.Errorf("Recover: kept %v, unreadable %q, %v; want the devices kept and 3 branches unreadable", rr.Kept, rr.Unreadable, err)
		}
	}()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("Inspect, Open or Recover of the store did not end within 60 s")
	}
}
