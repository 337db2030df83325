package ratelimit

import (
	"testing"
	"time"
)

// TestEveryCountsWhatItStandsFor: the first event runs the action; the
// others within the interval only count, and the next run reports them
// with its own.
func TestEveryCountsWhatItStandsFor(t *testing.T) {
	e := NewEvery(time.Hour)
	var runs []int64
	for range 5 {
		e.Do(2, func(n int64) { runs = append(runs, n) })
	}
	if len(runs) != 1 || runs[0] != 2 {
		t.Fatalf("runs %v, want one, of 2 events", runs)
	}
	// A nanosecond's interval: calls run again as soon as the clock has
	// moved, and each run reports every event since the one before.
	e, runs = NewEvery(time.Nanosecond), nil
	calls := int64(0)
	for i := 0; len(runs) < 2 && i < 1_000_000; i++ {
		calls++
		e.Do(1, func(n int64) { runs = append(runs, n) })
	}
	if len(runs) != 2 || runs[0] != 1 || runs[0]+runs[1] != calls {
		t.Fatalf("runs %v after %d calls, want two, the second of the calls since the first", runs, calls)
	}
}
