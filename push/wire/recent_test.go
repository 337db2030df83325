package wire

import (
	"encoding/binary"
	"testing"
)

func testID(n int) (id [16]byte) {
	binary.BigEndian.PutUint64(id[8:], uint64(n))
	return id
}

// TestRecentIDsForgetsTheOldest: the set holds the last n ids added,
// forgets the oldest first, and an id added again keeps its place.
func TestRecentIDsForgetsTheOldest(t *testing.T) {
	r := NewRecentIDs(4)
	for n := 1; n <= 6; n++ {
		if !r.Add(testID(n)) {
			t.Errorf("Add(%d) = false for a new id", n)
		}
	}
	if r.Add(testID(4)) { // already there: evicts nothing, not made younger
		t.Error("Add(4) = true for an id in the set")
	}
	r.Add(testID(7))
	for n, want := range map[int]bool{1: false, 2: false, 3: false, 4: true, 5: true, 6: true, 7: true, 8: false} {
		if got := r.Has(testID(n)); got != want {
			t.Errorf("Has(%d) = %v, want %v", n, got, want)
		}
	}
	if len(r.set) != 4 || len(r.ring) != 4 {
		t.Errorf("%d ids in the set, %d in the ring; want 4 and 4", len(r.set), len(r.ring))
	}
	r.Add(testID(8)) // 4 is the oldest now
	if r.Has(testID(4)) || !r.Has(testID(8)) {
		t.Errorf("after adding 8: Has(4) = %v, Has(8) = %v; want false, true", r.Has(testID(4)), r.Has(testID(8)))
	}
}
