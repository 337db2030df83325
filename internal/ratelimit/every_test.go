package ratelimit

import (
	"testing"
	"time"
)

// TestEveryCountsWhatItStandsFor: the first event runs the action; the
// others within the interval only count, and the next run reports them.
func TestEveryCountsWhatItStandsFor(t *testing.T) {
	e := NewEvery(time.Hour)
	var runs []int64
	for range 5 {
		e.Do(2, func(n int64) { runs = append(runs, n) })
	}
	if len(runs) != 1 || runs[0] != 2 {
		t.Fatalf("runs %v, want one, of 2 events", runs)
	}
	e = NewEvery(time.Nanosecond) // every call runs: each reports its own
	e.Do(3, func(n int64) { runs = append(runs, n) })
	time.Sleep(time.Millisecond) // past the interval
	e.Do(1, func(n int64) { runs = append(runs, n) })
	if len(runs) != 3 || runs[1] != 3 || runs[2] != 1 {
		t.Fatalf("runs %v, want [2 3 1]", runs)
	}
}
