package gateway

import (
	"runtime"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dpgate/dpgate/internal/testutil"
)

var sink [][]byte

// TestMemoryReturnedWhenQuiet: heap freed by a burst is given back once
// no collection has run for quietFor, not before, and counted.
// (Collections by other tests of the process can intervene: the test
// tries a few times.)
func TestMemoryReturnedWhenQuiet(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := newMemoryReturner(reg)
	var returned uint64
	for range 5 {
		for range 96 { // 96 MiB, garbage at the next collection
			sink = append(sink, make([]byte, 1<<20))
		}
		sink = nil
		runtime.GC()
		now := time.Now()
		m.check(now) // sees the collection
		if n := m.check(now.Add(quietFor / 2)); n != 0 {
			t.Fatalf("returned %d bytes after %v without a collection, want nothing before %v", n, quietFor/2, quietFor)
		}
		if returned = m.check(now.Add(quietFor + time.Second)); returned > 0 {
			break
		}
	}
	if returned < minReturn {
		t.Fatalf("returned %d bytes of a 96 MiB burst after a quiet spell, want at least %d", returned, minReturn)
	}
	if got := testutil.Metric(t, reg, "dpgate_memory_returned_bytes_total"); got != float64(returned) {
		t.Errorf("dpgate_memory_returned_bytes_total = %v, want %d", got, returned)
	}
	// Just returned: nothing more to give until the heap holds free memory again.
	if n := m.check(time.Now().Add(time.Hour)); n != 0 {
		t.Errorf("returned %d bytes again right after", n)
	}
}
