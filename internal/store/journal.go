package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sync"
)

// Journal is an append-only log beside the store file, for writes that
// must be durable at once but need not be in the tree yet (the push
// queue: most pushes are acknowledged, and so deleted, long before a
// tree commit would be worth its page writes). A write is one write
// system call and one fdatasync, for as many records as the caller
// gathered; bbolt's commit is two fdatasyncs and a rewrite of every page
// on the way to each changed key.
//
// Two files alternate. The owner appends to the active one; to move what
// it holds into the tree, it switches (appends go to the other file
// from then on), commits the records of the old file to the tree, then
// empties the old file. A crash at any point leaves every record either
// in the tree or in a file, so the owner's replay at open (Records) must
// tolerate records already in the tree.
//
// A record is framed as: length (4 bytes, big-endian, never 0) |
// CRC-32C of the body (4) | body. A file is emptied by writing zeros over
// what it held, not by cutting it: its blocks stay allocated (JournalSize
// of them from the start, fallocated), so an append neither allocates a block (it
// goes on when the disk is full) nor changes the file's size (its
// fdatasync has no metadata to write). Records reads a file up to the
// first frame of length 0 (the zeros after the end) or one cut short or
// failing its checksum; non-zero bytes after that are the tail of a write
// interrupted by a crash (acknowledged to nobody) or damage, and are
// reported.
type Journal struct {
	paths  [2]string
	mu     sync.Mutex // held while writing and syncing, and to switch
	emu    sync.Mutex // held while emptying a file, and to switch: never by Append
	files  [2]*os.File
	size   [2]int64 // where the next record goes (the end of the records); zeros after it (at open, the file's length before allocate)
	length [2]int64 // the file's length (zeros after size)
	active int
	broken error // a failed write that could not be undone
}

// JournalSize is the length each journal file is given at creation,
// written with zeros: 4 MiB holds a push to all of about 40,000 devices.
// A file grown beyond twice that by a burst is cut back to it when
// emptied.
const JournalSize = 4 << 20

// JournalSuffix ends the names of journal files (Reset moves them aside
// with the store file).
const JournalSuffix = ".journal"

const frameHeader = 8

// OpenJournal opens (or creates) the journal name in dir: files
// name-0.journal and name-1.journal.
func OpenJournal(dir, name string) (*Journal, error) {
	j := &Journal{}
	created := false
	for i := range j.files {
		j.paths[i] = filepath.Join(dir, fmt.Sprintf("%s-%d%s", name, i, JournalSuffix))
		f, err := os.OpenFile(j.paths[i], os.O_RDWR, 0)
		if errors.Is(err, os.ErrNotExist) {
			f, err = os.OpenFile(j.paths[i], os.O_RDWR|os.O_CREATE, 0o600)
			created = true
		}
		if err != nil {
			j.Close()
			return nil, fmt.Errorf("store: journal: %w", err)
		}
		j.files[i] = f
		st, err := f.Stat()
		if err != nil {
			j.Close()
			return nil, fmt.Errorf("store: journal: %w", err)
		}
		j.size[i], j.length[i] = st.Size(), st.Size() // until Records finds the end
		if st.Size() < JournalSize {
			if err := allocate(f, st.Size(), JournalSize); err != nil {
				j.Close()
				return nil, fmt.Errorf("store: journal: %w", err)
			}
			if err := syncData(f); err != nil {
				j.Close()
				return nil, fmt.Errorf("store: journal: %w", err)
			}
			j.length[i] = JournalSize
		}
	}
	if created {
		if err := syncDir(dir); err != nil {
			j.Close()
			return nil, fmt.Errorf("store: journal: %w", err)
		}
	}
	return j, nil
}

// AppendRecord frames body and appends it to buf.
func AppendRecord(buf, body []byte) []byte {
	buf = binary.BigEndian.AppendUint32(buf, uint32(len(body)))
	buf = binary.BigEndian.AppendUint32(buf, crc32.Checksum(body, castagnoli))
	return append(buf, body...)
}

// Records calls fn with the body of every whole record and the file (0
// or 1) it is in, file by file, and sets where each file's next record
// goes. A file's records end at its first frame of length 0 (the zeros
// after the last write). A frame cut short or failing its checksum
// before that (damage) is skipped: the reading goes on at the next
// offset where a frame passes its checksum and is followed by another
// that does, or by the end. The bytes skipped, and those of a last write
// cut short by a crash, are reported per file, not passed to fn.
func (j *Journal) Records(fn func(file int, body []byte) error) (damaged map[string]int64, err error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	block := make([]byte, 256<<10)
	for i, f := range j.files {
		// The zeros after the last non-zero byte (most of a file) are
		// found in blocks and not kept: data holds the bytes before
		// them, then as many zeros as a record ending in zeros could
		// reach into (maxResync). Past size all are zeros (a file created
		// at this open is not read at all).
		e, err := dataEnd(f, j.size[i], block)
		if err != nil {
			return damaged, fmt.Errorf("store: journal: %w", err)
		}
		if e == 0 {
			j.size[i] = 0
			continue
		}
		data := make([]byte, min(j.length[i], e+frameHeader+maxResync))
		if _, err := f.ReadAt(data[:e], 0); err != nil && err != io.EOF {
			return damaged, fmt.Errorf("store: journal: %w", err)
		}
		end := int(e) // after the last non-zero byte (a record may end in zeros)
		var skipped int64
		off := 0
		for off < len(data) {
			body, ok := frameAt(data, off)
			if !ok {
				if off >= end { // zeros to the end: no more records
					break
				}
				next := resync(data, off+1, end)
				skipped += int64(next - off)
				off = next
				continue
			}
			if err := fn(i, body); err != nil {
				return damaged, err
			}
			off += frameHeader + len(body)
		}
		if skipped > 0 {
			if damaged == nil {
				damaged = map[string]int64{}
			}
			damaged[j.paths[i]] = skipped
		}
		// Appends go after the last non-zero byte, never behind damage;
		// the owner empties the files once it has what they hold.
		j.size[i] = int64(max(end, off))
	}
	return damaged, nil
}

// dataEnd returns the offset after the last non-zero byte of f's first
// n bytes (0 if all are zeros), reading them from the end backwards into
// block.
func dataEnd(f *os.File, n int64, block []byte) (int64, error) {
	for n > 0 {
		b := block[:min(int64(len(block)), n)]
		if _, err := f.ReadAt(b, n-int64(len(b))); err != nil && err != io.EOF {
			return 0, err
		}
		if k := len(trimZeros(b)); k > 0 {
			return n - int64(len(b)) + int64(k), nil
		}
		n -= int64(len(b))
	}
	return 0, nil
}

// zeros is what zero writes and what trimZeros compares with.
var zeros [64 << 10]byte

// trimZeros returns b without its trailing zero bytes, comparing 64 KiB
// at a time (bytes.Equal is vectorised; a loop over bytes costs a
// millisecond per MiB).
func trimZeros(b []byte) []byte {
	for len(b) >= len(zeros) && bytes.Equal(b[len(b)-len(zeros):], zeros[:]) {
		b = b[:len(b)-len(zeros)]
	}
	return bytes.TrimRight(b, "\x00")
}

// maxResync bounds the records resync looks for: larger than any owner
// writes (the push queue's records are under 66 KiB).
const maxResync = 1 << 20

// frameAt returns the body of the frame at off in data if it is whole
// and passes its checksum.
func frameAt(data []byte, off int) ([]byte, bool) {
	if len(data)-off < frameHeader {
		return nil, false
	}
	n := int(binary.BigEndian.Uint32(data[off:]))
	if n == 0 || n > len(data)-off-frameHeader {
		return nil, false
	}
	body := data[off+frameHeader : off+frameHeader+n]
	return body, crc32.Checksum(body, castagnoli) == binary.BigEndian.Uint32(data[off+4:])
}

// resync returns the first offset from off, before end (where only zeros
// follow), at which a frame passes its checksum and is followed by
// another that does or by zeros only (two checksums: a damaged stretch
// passing one by chance is not taken for a record); end if none.
func resync(data []byte, off, end int) int {
	for ; off < end; off++ {
		if off+frameHeader <= len(data) && binary.BigEndian.Uint32(data[off:]) > maxResync {
			continue // not one of ours; and a checksum over megabytes at every offset would be slow
		}
		body, ok := frameAt(data, off)
		if !ok {
			continue
		}
		next := off + frameHeader + len(body)
		if next >= end {
			return off
		}
		if _, ok := frameAt(data, next); ok {
			return off
		}
	}
	return end
}

// Append writes buf (records framed with AppendRecord) at the end of the
// active file and makes it durable. If either fails, the file is cut
// back to where it ended, so that no later record sits behind a torn
// one; if even that fails, every later Append fails too.
func (j *Journal) Append(buf []byte) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.broken != nil {
		return j.broken
	}
	i := j.active
	f := j.files[i]
	_, err := f.WriteAt(buf, j.size[i])
	if err == nil {
		err = syncData(f)
	}
	if err != nil {
		// Zeros over whatever part of it landed: the next record must not
		// follow a torn one.
		if zerr := zero(f, j.size[i], j.size[i]+int64(len(buf))); zerr != nil {
			j.broken = fmt.Errorf("store: journal %s: a failed write could not be undone (%v): refusing further writes", j.paths[i], zerr)
		}
		return fmt.Errorf("store: journal: %w", err)
	}
	j.size[i] += int64(len(buf))
	j.length[i] = max(j.length[i], j.size[i])
	return nil
}

// Switch makes the other file the active one (after the write in
// progress, if any) and returns the one that was: its records are
// what the owner commits to the tree before Empty(old).
func (j *Journal) Switch() (old int) {
	j.emu.Lock()
	defer j.emu.Unlock()
	j.mu.Lock()
	defer j.mu.Unlock()
	old = j.active
	j.active = 1 - old
	return old
}

// Empty cuts file i (not the active one) to nothing, durably.
// Appends to the active file go on meanwhile: the zeros and their
// fdatasync do not hold them up (Switch waits instead).
func (j *Journal) Empty(i int) error {
	j.emu.Lock()
	defer j.emu.Unlock()
	j.mu.Lock()
	active, size, length := j.active, j.size[i], j.length[i]
	j.mu.Unlock()
	if i == active {
		return errors.New("store: journal: emptying the active file")
	}
	if size == 0 {
		return nil
	}
	f := j.files[i]
	if length > 2*JournalSize {
		if err := f.Truncate(JournalSize); err != nil {
			return fmt.Errorf("store: journal: %w", err)
		}
		length = JournalSize
	}
	if err := zero(f, 0, min(size, length)); err != nil {
		return fmt.Errorf("store: journal: %w", err)
	}
	if err := syncData(f); err != nil {
		return fmt.Errorf("store: journal: %w", err)
	}
	j.mu.Lock()
	j.size[i], j.length[i] = 0, length
	j.mu.Unlock()
	return nil
}

// zero writes zeros over [from, to) of f.
func zero(f *os.File, from, to int64) error {
	for from < to {
		n := min(int64(len(zeros)), to-from)
		if _, err := f.WriteAt(zeros[:n], from); err != nil {
			return err
		}
		from += n
	}
	return nil
}

// Size is the bytes of records held in both files.
func (j *Journal) Size() int64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.size[0] + j.size[1]
}

// Close closes the files.
func (j *Journal) Close() error {
	var errs []error
	for _, f := range j.files {
		if f != nil {
			errs = append(errs, f.Close())
		}
	}
	return errors.Join(errs...)
}
