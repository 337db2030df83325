package gateway

import (
	"runtime"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dpgate/dpgate/internal/testutil"
)

var sink [][]byte

// TestMemoryReturned: heap freed by a burst is given back once the
// gateway went quiet (under quietAlloc allocated in quietFor), or once a
// storm of new sessions is over, not before, and counted. (Collections by other tests of the
// process can intervene: each case tries a few times.)
func TestMemoryReturned(t *testing.T) {
	burst := func() {
		for range 96 { // 96 MiB, garbage at the next collection
			sink = append(sink, make([]byte, 1<<20))
		}
		sink = nil
		runtime.GC()
	}
	t.Run("quiet", func(t *testing.T) {
		reg := prometheus.NewRegistry()
		m := newMemoryReturner(reg, nil)
		var returned uint64
		for range 5 {
			burst()
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
	})
	t.Run("storm", func(t *testing.T) {
		var opened uint64
		m := newMemoryReturner(prometheus.NewRegistry(), func() uint64 { return opened })
		var returned uint64
		for range 5 {
			burst()
			now := time.Now()
			m.check(now)
			opened += stormSessions / 2 // a storm still going: not yet
			if n := m.check(now.Add(time.Second)); n != 0 {
				t.Fatalf("returned %d bytes during a storm", n)
			}
			opened += stormSessions
			m.check(now.Add(2 * time.Second))
			if n := m.check(now.Add(2*time.Second + stormOver/2)); n != 0 {
				t.Fatalf("returned %d bytes %v after the last session opened, want nothing before %v", n, stormOver/2, stormOver)
			}
			// Over, well before quietFor since the collection.
			if returned = m.check(now.Add(2*time.Second + stormOver)); returned > 0 {
				break
			}
		}
		if returned < minReturn {
			t.Fatalf("returned %d bytes of a 96 MiB burst after a storm of %d sessions, want at least %d", returned, stormSessions*3/2, minReturn)
		}
	})
}
