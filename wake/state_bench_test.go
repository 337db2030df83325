package wake

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"testing"

	"github.com/dpgate/dpgate/internal/testutil"
)

// BenchmarkWakeStateMemory is the heap a wake service keeps after wake-ups
// of many distinct device ids nothing knows (pushes to new ids do this):
// DPGATE_BENCH_WAKE_IDS of them (default 460,000), measured after GC.
func BenchmarkWakeStateMemory(b *testing.B) {
	n := 460_000
	if v, err := strconv.Atoi(os.Getenv("DPGATE_BENCH_WAKE_IDS")); err == nil {
		n = v
	}
	for b.Loop() {
		k, _ := LoadOrCreateKeys(b.TempDir(), "")
		s, _ := New(Config{Keys: k, Lookup: func(string) (Target, bool) { return Target{}, false }, Logger: testutil.Quiet()})
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		for i := range n {
			s.Wake(fmt.Sprintf("device-%07d", i), "push")
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/(1<<20), "MiB-kept")
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(n), "B/device")
		runtime.KeepAlive(s)
	}
}
