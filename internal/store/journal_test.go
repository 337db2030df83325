package store

import (
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// TestJournal: records come back whole and in order from both files; a
// file cut inside a record, or with a byte changed, gives back what
// comes before and reports the rest as damaged; an emptied file gives
// back nothing; the files survive a reopen.
func TestJournal(t *testing.T) {
	dir := t.TempDir()
	j, err := OpenJournal(dir, "q")
	if err != nil {
		t.Fatal(err)
	}
	var buf []byte
	for i := range 3 {
		buf = AppendRecord(buf, fmt.Appendf(nil, "record-%d", i))
	}
	if err := j.Append(buf); err != nil {
		t.Fatal(err)
	}
	old := j.Switch()
	if old != 0 {
		t.Fatalf("the first active file is %d, want 0", old)
	}
	if err := j.Append(AppendRecord(nil, []byte("in the other file"))); err != nil {
		t.Fatal(err)
	}
	want := []string{"record-0", "record-1", "record-2", "in the other file"}
	if got, damaged := readRecords(t, j); !slices.Equal(got, want) || damaged != nil {
		t.Fatalf("read %q (damaged %v), want %q", got, damaged, want)
	}
	if err := j.Empty(1 - old); err == nil {
		t.Error("emptying the active file succeeded")
	}
	j.Close()

	// A crash in the middle of the next write: half a record at the end.
	path := fmt.Sprintf("%s/q-%d%s", dir, old, JournalSuffix)
	rec := AppendRecord(nil, []byte("cut short by the crash"))
	f, _ := os.OpenFile(path, os.O_WRONLY, 0)
	f.WriteAt(rec[:len(rec)/2], int64(len(buf)))
	f.Close()
	j, err = OpenJournal(dir, "q")
	if err != nil {
		t.Fatal(err)
	}
	got, damaged := readRecords(t, j)
	if !slices.Equal(got, want) || damaged[path] != int64(len(rec)/2) {
		t.Fatalf("after a torn write: %q, damaged %v; want %q and %d bytes of %s", got, damaged, want, len(rec)/2, path)
	}
	j.Close()

	// A byte changed in the second record: the first only (the third is
	// followed by the torn write, so no second checksum vouches for it:
	// TestJournalSkipsDamage has damage between whole records).
	raw, _ := os.ReadFile(path)
	raw[len(AppendRecord(nil, []byte("record-0")))+frameHeader] ^= 1
	os.WriteFile(path, raw, 0o600)
	j, err = OpenJournal(dir, "q")
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := readRecords(t, j); !slices.Equal(got, []string{"record-0", "in the other file"}) {
		t.Errorf("after a changed byte: %q", got)
	}

	// Emptied, file by file (a reopened journal appends to file 0).
	if err := j.Empty(1); err != nil {
		t.Fatal(err)
	}
	if got, _ := readRecords(t, j); !slices.Equal(got, []string{"record-0"}) {
		t.Errorf("after emptying file 1: %q", got)
	}
	if err := j.Empty(j.Switch()); err != nil || j.Size() != 0 {
		t.Fatalf("Empty: %v, size %d", err, j.Size())
	}
	if got, damaged := readRecords(t, j); len(got) != 0 || damaged != nil {
		t.Errorf("emptied journal: %q, damaged %v", got, damaged)
	}
	if err := j.Append(AppendRecord(nil, []byte("after"))); err != nil {
		t.Fatal(err)
	}
	if got, _ := readRecords(t, j); !slices.Equal(got, []string{"after"}) {
		t.Errorf("appended after emptying: %q", got)
	}
	for _, p := range j.paths {
		if st, _ := os.Stat(p); st.Size() != JournalSize {
			t.Errorf("%s is %d bytes, want its blocks kept (%d)", p, st.Size(), JournalSize)
		}
	}
	j.Close()
}

// readRecords returns the bodies j.Records reads, in order, and what it
// reports damaged.
func readRecords(t *testing.T, j *Journal) ([]string, map[string]int64) {
	t.Helper()
	var got []string
	damaged, err := j.Records(func(_ int, b []byte) error { got = append(got, string(b)); return nil })
	if err != nil {
		t.Fatal(err)
	}
	return got, damaged
}

// TestJournalSkipsDamage: a record damaged between whole ones (a changed
// byte, a length field gone wrong) is left out and reported; the records
// after it are read, one ending in zero bytes whole, and appends go
// after the last.
func TestJournalSkipsDamage(t *testing.T) {
	bodies := []string{"record-0", "record-1", "record-2", "ends in zeros\x00\x00\x00"}
	var frames [][]byte
	for _, b := range bodies {
		frames = append(frames, AppendRecord(nil, []byte(b)))
	}
	for _, tc := range []struct {
		name   string
		damage func(frame []byte)
	}{
		{"a changed byte", func(f []byte) { f[frameHeader+3] ^= 0x40 }},
		{"a length gone wrong", func(f []byte) { f[1] = 0x7f }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			damagedFrame := slices.Clone(frames[1])
			tc.damage(damagedFrame)
			file := slices.Concat(frames[0], damagedFrame, frames[2], frames[3])
			path := filepath.Join(dir, "q-0"+JournalSuffix)
			if err := os.WriteFile(path, file, 0o600); err != nil {
				t.Fatal(err)
			}
			j, err := OpenJournal(dir, "q")
			if err != nil {
				t.Fatal(err)
			}
			defer j.Close()
			got, damaged := readRecords(t, j)
			want := []string{bodies[0], bodies[2], bodies[3]}
			if !slices.Equal(got, want) || damaged[path] != int64(len(damagedFrame)) {
				t.Fatalf("read %q, damaged %v; want %q and %d bytes of %s", got, damaged, want, len(damagedFrame), path)
			}
			if err := j.Append(AppendRecord(nil, []byte("after"))); err != nil {
				t.Fatal(err)
			}
			if got, _ := readRecords(t, j); !slices.Equal(got, append(want, "after")) {
				t.Errorf("after an append: %q, want %q", got, append(want, "after"))
			}
		})
	}
}

// TestResetMovesJournalsAside: "store reset" moves the journal files
// aside with the store file, so that no write meant for the old store is
// replayed into the new one.
func TestResetMovesJournalsAside(t *testing.T) {
	dir := t.TempDir()
	db, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	j, err := OpenJournal(dir, "q")
	if err != nil {
		t.Fatal(err)
	}
	j.Append(AppendRecord(nil, []byte("for the old store")))
	j.Close()
	if _, err := Reset(dir); err != nil {
		t.Fatal(err)
	}
	j, err = OpenJournal(dir, "q")
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if j.Size() != 0 {
		t.Errorf("after reset the journal holds %d bytes, want 0", j.Size())
	}
	aside, _ := filepath.Glob(filepath.Join(dir, "q-0"+JournalSuffix+".old-*"))
	if len(aside) != 1 {
		t.Errorf("journal files kept aside: %v, want q-0's", aside)
	}
}

// BenchmarkRecordsAllDamaged: opening a journal file whose JournalSize
// bytes are all random (every offset a failed frame): the bound on what
// resync costs.
func BenchmarkRecordsAllDamaged(b *testing.B) {
	dir := b.TempDir()
	garbage := make([]byte, JournalSize)
	rand.Read(garbage)
	if err := os.WriteFile(filepath.Join(dir, "q-0"+JournalSuffix), garbage, 0o600); err != nil {
		b.Fatal(err)
	}
	j, err := OpenJournal(dir, "q")
	if err != nil {
		b.Fatal(err)
	}
	defer j.Close()
	for b.Loop() {
		if _, err := j.Records(func(int, []byte) error { return nil }); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRecordsEmpty: opening an empty journal (two files of
// JournalSize zeros) and reading it, as every start of a gateway whose
// queue was drained does.
func BenchmarkRecordsEmpty(b *testing.B) {
	dir := b.TempDir()
	j, err := OpenJournal(dir, "q")
	if err != nil {
		b.Fatal(err)
	}
	j.Close()
	for b.Loop() {
		j, err := OpenJournal(dir, "q")
		if err != nil {
			b.Fatal(err)
		}
		if _, err := j.Records(func(int, []byte) error { return nil }); err != nil {
			b.Fatal(err)
		}
		j.Close()
	}
}

// TestJournalStrayByteInTheZeros: a byte changed deep in the zeros after
// the records (damage) is reported with the zeros before it, the records
// are read, and appends go after it.
func TestJournalStrayByteInTheZeros(t *testing.T) {
	dir := t.TempDir()
	j, err := OpenJournal(dir, "q")
	if err != nil {
		t.Fatal(err)
	}
	recs := slices.Concat(AppendRecord(nil, []byte("record-0")), AppendRecord(nil, []byte("ends in zeros\x00\x00")))
	if err := j.Append(recs); err != nil {
		t.Fatal(err)
	}
	j.Close()
	path := filepath.Join(dir, "q-0"+JournalSuffix)
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	stray := int64(JournalSize - 5000)
	f.WriteAt([]byte{0x10}, stray)
	f.Close()
	if j, err = OpenJournal(dir, "q"); err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	got, damaged := readRecords(t, j)
	want := []string{"record-0", "ends in zeros\x00\x00"}
	if skipped := stray + 1 - int64(len(recs)); !slices.Equal(got, want) || damaged[path] != skipped || len(damaged) != 1 {
		t.Fatalf("read %q, damaged %v; want %q and %d bytes of %s", got, damaged, want, skipped, path)
	}
	if j.Size() != stray+1 {
		t.Errorf("appends go at %d, want %d (after the stray byte)", j.Size(), stray+1)
	}
}

// TestAppendWhileEmptying: appends to the active file go on while the
// other one is emptied (Empty writes its zeros and syncs without the
// lock Append takes); after both, the journal holds exactly the
// appended records, in order, across a reopen.
func TestAppendWhileEmptying(t *testing.T) {
	dir := t.TempDir()
	j, err := OpenJournal(dir, "q")
	if err != nil {
		t.Fatal(err)
	}
	var big []byte
	for i := range 20000 { // about 1 MB to zero
		big = AppendRecord(big, fmt.Appendf(nil, "old-%05d-%040d", i, 0))
	}
	if err := j.Append(big); err != nil {
		t.Fatal(err)
	}
	old := j.Switch()
	emptied := make(chan error, 1)
	go func() { emptied <- j.Empty(old) }()
	var want []string
	var size int64
	for i := range 200 {
		r := AppendRecord(nil, fmt.Appendf(nil, "new-%d", i))
		want, size = append(want, fmt.Sprintf("new-%d", i)), size+int64(len(r))
		if err := j.Append(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := <-emptied; err != nil {
		t.Fatal(err)
	}
	if j.Size() != size {
		t.Errorf("Size() = %d after the old file was emptied, want %d", j.Size(), size)
	}
	j.Close()
	j, err = OpenJournal(dir, "q")
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if got, _ := readRecords(t, j); !slices.Equal(got, want) {
		t.Fatalf("read %d records (first %q), want the %d appended", len(got), got[:min(3, len(got))], len(want))
	}
}

// BenchmarkAppendWhileEmptying: a 100-byte Append issued just after
// Empty of the other file began, that file holding `old` bytes (80 KB:
// a 200 ms checkpoint at 2,000 pushes a second; 1 MB: after a push to
// 10,000 devices). Reported: the Append's own time.
func BenchmarkAppendWhileEmptying(b *testing.B) {
	for _, old := range []int{80 << 10, 1 << 20} {
		b.Run(fmt.Sprintf("old=%dKiB", old>>10), func(b *testing.B) {
			j, err := OpenJournal(b.TempDir(), "q")
			if err != nil {
				b.Fatal(err)
			}
			defer j.Close()
			fill := AppendRecord(nil, make([]byte, old-8))
			rec := AppendRecord(nil, make([]byte, 92))
			var lat []time.Duration
			for b.Loop() {
				b.StopTimer()
				if err := j.Append(fill); err != nil {
					b.Fatal(err)
				}
				prev := j.Switch()
				emptied := make(chan error, 1)
				go func() { emptied <- j.Empty(prev) }()
				time.Sleep(50 * time.Microsecond) // Empty is under way
				b.StartTimer()
				start := time.Now()
				if err := j.Append(rec); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(start))
				b.StopTimer()
				if err := <-emptied; err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-us")
			b.ReportMetric(float64(lat[len(lat)*9/10].Microseconds()), "p90-us")
		})
	}
}
