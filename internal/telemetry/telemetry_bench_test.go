package telemetry

import (
	"sync/atomic"
	"testing"
	"time"

	metrics "github.com/hashicorp/go-metrics"
	promsink "github.com/hashicorp/go-metrics/prometheus"
	"github.com/prometheus/client_golang/prometheus"
)

// BenchmarkCounter compares the ways of counting one event: go-metrics
// through the in-memory and Prometheus sinks (what the gateway used
// before issue 16), a client_golang counter (what it uses now), the same
// looked up by label value on each call, and a bare atomic add:
//
//	go test -run '^$' -bench Counter -cpu 1,2 ./internal/telemetry
func BenchmarkCounter(b *testing.B) {
	b.Run("go-metrics", func(b *testing.B) {
		reg := prometheus.NewRegistry()
		prom, err := promsink.NewPrometheusSinkFrom(promsink.PrometheusOpts{Registerer: reg, Name: "bench", Expiration: time.Minute})
		if err != nil {
			b.Fatal(err)
		}
		cfg := metrics.DefaultConfig("dpgate")
		cfg.EnableHostname, cfg.EnableRuntimeMetrics = false, false
		m, err := metrics.New(cfg, metrics.FanoutSink{metrics.NewInmemSink(10*time.Second, time.Minute), prom})
		if err != nil {
			b.Fatal(err)
		}
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				m.IncrCounter([]string{"push", "sent"}, 1)
			}
		})
	})
	b.Run("prometheus", func(b *testing.B) {
		c := prometheus.NewCounter(prometheus.CounterOpts{Name: "bench_total", Help: "h"})
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				c.Inc()
			}
		})
	})
	b.Run("prometheus-label", func(b *testing.B) {
		c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "bench_total", Help: "h"}, []string{"reason"})
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				c.WithLabelValues("source_rate").Inc()
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
