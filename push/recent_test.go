package push

import (
	"encoding/binary"
	"testing"
)

func testID(n int) (id [16]byte) {
	binary.BigEndian.PutUint64(id[8:], uint64(n))
	return id
}

// TestRecentIDsForgetsTheOldest: the set holds the last max ids added,
// forgets the oldest first, and an id added again keeps its place.
func TestRecentIDsForgetsTheOldest(t *testing.T) {
	r := newRecentIDs(4)
	for n := 1; n <= 6; n++ {
		r.add(testID(n))
	}
	r.add(testID(4)) // already there: evicts nothing, not made younger
	r.add(testID(7))
	for n, want := range map[int]bool{1: false, 2: false, 3: false, 4: true, 5: true, 6: true, 7: true, 8: false} {
		if got := r.has(testID(n)); got != want {
			t.Errorf("has(%d) = %v, want %v", n, got, want)
		}
	}
	if len(r.set) != 4 || len(r.ring) != 4 {
		t.Errorf("%d ids in the set, %d in the ring; want 4 and 4", len(r.set), len(r.ring))
	}
	r.add(testID(8)) // 4 is the oldest now
	if r.has(testID(4)) || !r.has(testID(8)) {
		t.Errorf("after adding 8: has(4) = %v, has(8) = %v; want false, true", r.has(testID(4)), r.has(testID(8)))
	}
}

// BenchmarkAckedIDs is the cost of recording one ACK in a gateway that
// has already seen recentAcks of them (every gateway after its first
// 65,536 ACKs).
//
//	go test -run '^$' -bench AckedIDs ./push
func BenchmarkAckedIDs(b *testing.B) {
	s := &Server{recent: newRecentIDs(recentAcks), idWaiters: map[[16]byte][]chan struct{}{}}
	for n := range recentAcks {
		s.ackedIDs([][16]byte{testID(n)})
	}
	b.ResetTimer()
	for n := range b.N {
		s.ackedIDs([][16]byte{testID(recentAcks + n)})
	}
}
