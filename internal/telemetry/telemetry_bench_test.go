package telemetry

import (
	"sync/atomic"
	"testing"
)

// BenchmarkCounter compares counting one event through go-metrics (the
// gateway's sinks: in-memory and Prometheus) with an atomic add that is
// flushed to go-metrics later, as the push server counts pushes written
// and acknowledged:
//
//	go test -run '^$' -bench Counter -cpu 1,2 ./internal/telemetry
func BenchmarkCounter(b *testing.B) {
	tel, err := New(false)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("go-metrics", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				tel.Metrics.IncrCounter([]string{"push", "sent"}, 1)
			}
		})
	})
	b.Run("atomic", func(b *testing.B) {
		var n atomic.Uint64
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				n.Add(1)
			}
		})
	})
}
