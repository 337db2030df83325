package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"

	bolt "go.etcd.io/bbolt"
)

// pageTree checks, from the file itself, that the pages under a bucket's
// root form a tree before a cursor walks them. A cursor trusts the child
// pointers of branch pages: a pointer corrupted to point back up (a
// flipped bit did it in the chaos harness) made it descend for ever, its
// stack growing by an entry a step (8 GiB in two minutes of `dpgate store
// recover` on a 128 KiB file). Each page is read once per walk; a page
// reached twice, a page past the end, a page that names itself wrongly
// or is neither branch nor leaf, or a tree deeper than any real one, and
// that bucket is unreadable. A bucket small enough to live inline, in
// its parent's leaf, has its page there: one flagged a branch made the
// cursor take the same page again and again (the hang above); those are
// checked with their parent's leaves, and a bad one is reported for the
// child alone (inline).
type pageTree struct {
	data     []byte // the file, mapped read-only; nil: nothing to check
	pageSize int64
	pages    uint64 // in the file
	seen     map[uint64]bool
	inline   map[string]error // "parent root/child name" -> what is wrong with the child's inline page
}

// bbolt's page header (little-endian on the platforms dpgate runs on):
// id uint64, flags uint16, count uint16, overflow uint32; a branch page's
// elements follow, 16 bytes each: pos uint32, ksize uint32, pgid uint64.
const (
	pageHeaderSize  = 16
	branchElemSize  = 16
	branchPageFlag  = 0x01
	leafPageFlag    = 0x02
	leafElemSize    = 16   // flags, pos, ksize, vsize: uint32 each
	bucketLeafFlag  = 0x01 // a leaf element that is a bucket
	bucketHeader    = 16   // root pgid, sequence
	maxPageTreeDeep = 32   // a B+tree of a billion records is 8 deep
)

func newPageTree(tx *bolt.Tx) *pageTree {
	t := &pageTree{seen: map[uint64]bool{}, inline: map[string]error{}}
	f, err := os.Open(tx.DB().Path())
	if err != nil {
		return t // no file to read (then there is nothing to guard against)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || st.Size() == 0 {
		return t
	}
	// Only what the file holds is mapped: a file cut short has fewer pages
	// than its meta page says, and those are "past the end" here.
	if t.data, err = mapFile(f, st.Size()); err != nil {
		t.data = nil
		return t
	}
	t.pageSize = int64(tx.DB().Info().PageSize)
	t.pages = uint64(min(tx.Size(), st.Size()) / t.pageSize)
	return t
}

func (t *pageTree) close() {
	if t.data != nil {
		unmapFile(t.data)
	}
}

// page is page id and its overflow pages, or nil past the end.
func (t *pageTree) page(id uint64, overflow int64) []byte {
	if id+uint64(overflow) >= t.pages {
		return nil
	}
	return t.data[int64(id)*t.pageSize : (int64(id)+overflow+1)*t.pageSize]
}

// check walks the pages under the bucket's root (inline buckets have
// none).
func (t *pageTree) check(b *bolt.Bucket) error {
	root := uint64(b.Root())
	if t.data == nil || root == 0 {
		return nil
	}
	type item struct {
		id    uint64
		depth int
	}
	stack := []item{{root, 1}}
	for len(stack) > 0 {
		it := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		switch {
		case it.id < 2 || it.id >= t.pages:
			return fmt.Errorf("page %d is past the end of the file (%d pages)", it.id, t.pages)
		case it.depth > maxPageTreeDeep:
			return fmt.Errorf("pages nested %d deep: %w", it.depth, errCycle)
		case t.seen[it.id]:
			return fmt.Errorf("page %d is reached twice: %w", it.id, errCycle)
		}
		t.seen[it.id] = true
		hdr := t.page(it.id, 0)
		if self := binary.LittleEndian.Uint64(hdr); self != it.id {
			return fmt.Errorf("page %d identifies itself as %d", it.id, self)
		}
		flags, count := binary.LittleEndian.Uint16(hdr[8:]), int64(binary.LittleEndian.Uint16(hdr[10:]))
		overflow := int64(binary.LittleEndian.Uint32(hdr[12:]))
		switch { // bbolt compares the flags whole: 0x12 is neither
		case flags == leafPageFlag:
			if err := t.checkInline(root, it.id, count, overflow); err != nil {
				return err
			}
			continue
		case flags != branchPageFlag:
			return fmt.Errorf("page %d is neither a branch nor a leaf (flags %#x)", it.id, flags)
		case pageHeaderSize+count*branchElemSize > (overflow+1)*t.pageSize || it.id+uint64(overflow) >= t.pages:
			return fmt.Errorf("page %d claims %d elements on %d pages", it.id, count, overflow+1)
		}
		elems := t.page(it.id, overflow)[pageHeaderSize:]
		for i := int64(0); i < count; i++ {
			stack = append(stack, item{binary.LittleEndian.Uint64(elems[i*branchElemSize+8:]), it.depth + 1})
		}
	}
	return nil
}

// checkInline reads leaf page id of the bucket rooted at root and checks
// the inline page of every inline bucket among its elements.
func (t *pageTree) checkInline(root, id uint64, count, overflow int64) error {
	page := t.page(id, overflow)
	if page == nil {
		return fmt.Errorf("page %d claims %d overflow pages past the end of the file", id, overflow)
	}
	if pageHeaderSize+count*leafElemSize > int64(len(page)) {
		return fmt.Errorf("page %d claims %d elements on %d pages", id, count, overflow+1)
	}
	for i := int64(0); i < count; i++ {
		e := page[pageHeaderSize+i*leafElemSize:]
		if binary.LittleEndian.Uint32(e)&bucketLeafFlag == 0 {
			continue
		}
		start := pageHeaderSize + i*leafElemSize + int64(binary.LittleEndian.Uint32(e[4:]))
		ksize, vsize := int64(binary.LittleEndian.Uint32(e[8:])), int64(binary.LittleEndian.Uint32(e[12:]))
		if start+ksize+vsize > int64(len(page)) || vsize < bucketHeader {
			return fmt.Errorf("page %d: element %d runs past the page", id, i)
		}
		name, v := page[start:start+ksize], page[start+ksize:start+ksize+vsize]
		if binary.LittleEndian.Uint64(v) != 0 {
			continue // a bucket of its own pages: checked when it is walked
		}
		if err := inlinePageOK(v[bucketHeader:]); err != nil {
			t.inline[fmt.Sprintf("%d/%s", root, name)] = err
		}
	}
	return nil
}

// inlinePageOK checks an inline bucket's page: a leaf (an inline bucket
// is never split; bbolt's cursor takes any page without the leaf flag for
// a branch, and an inline one's first child is itself again) whose
// elements fit and hold no bucket (a bucket with buckets in it is never
// inline).
func inlinePageOK(p []byte) error {
	if len(p) < pageHeaderSize {
		return errors.New("its inline page is cut short")
	}
	flags, count := binary.LittleEndian.Uint16(p[8:]), int(binary.LittleEndian.Uint16(p[10:]))
	if flags != leafPageFlag { // bbolt's test: anything else its cursor takes for a branch
		return fmt.Errorf("its inline page has flags %#x, not a leaf's", flags)
	}
	if pageHeaderSize+count*leafElemSize > len(p) {
		return fmt.Errorf("its inline page claims %d elements in %d bytes", count, len(p))
	}
	for i := range count {
		e := p[pageHeaderSize+i*leafElemSize:]
		if binary.LittleEndian.Uint32(e)&bucketLeafFlag != 0 {
			return errors.New("its inline page holds a bucket")
		}
		end := pageHeaderSize + i*leafElemSize + int(binary.LittleEndian.Uint32(e[4:])) +
			int(binary.LittleEndian.Uint32(e[8:])) + int(binary.LittleEndian.Uint32(e[12:]))
		if end > len(p) {
			return fmt.Errorf("its inline page's element %d runs past it", i)
		}
	}
	return nil
}

// inlineErr is what is wrong with the inline page of parent's child name,
// nil if nothing (or if it is not inline).
func (t *pageTree) inlineErr(parent *bolt.Bucket, name []byte) error {
	return t.inline[fmt.Sprintf("%d/%s", parent.Root(), name)]
}
