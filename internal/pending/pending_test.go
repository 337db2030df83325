package pending

import (
	"net"
	"testing"
	"time"
)

// TestEvictOldestOverAge: only a connection listed longer than the age
// is evicted, the oldest first, closed, and reported evicted by Remove;
// the others are not.
func TestEvictOldestOverAge(t *testing.T) {
	l := New()
	var ends []net.Conn
	for range 3 {
		a, b := net.Pipe()
		defer b.Close()
		l.Add(a)
		ends = append(ends, a)
	}
	if c := l.Evict(time.Hour); c != nil {
		t.Fatalf("evicted %v, none is an hour old", c)
	}
	for i := 0; i < 2; i++ {
		if c := l.Evict(0); c != ends[i] {
			t.Fatalf("eviction %d: got %v, want the oldest left, %v", i, c, ends[i])
		}
		if _, err := ends[i].Write([]byte("x")); err == nil {
			t.Errorf("evicted connection %d still open", i)
		}
	}
	if l.Settle(ends[1]) || !l.Settle(ends[2]) {
		t.Error("Settle: want false for an evicted connection, true for one that was not")
	}
	if !l.Remove(ends[1]) {
		t.Error("Remove of an evicted connection Settle refused: want true")
	}
	if !l.Remove(ends[0]) || l.Remove(ends[2]) {
		t.Error("Remove: want true for an evicted connection, false for one that was not")
	}
	if l.Remove(ends[2]) {
		t.Error("Remove of a connection no longer listed: want false")
	}
	if c := l.Evict(0); c != nil {
		t.Errorf("evicted %v from a list with none left", c)
	}
}
