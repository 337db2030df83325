//go:build unix

package gateway

import (
	"context"
	"fmt"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// BenchmarkPublish is the cost of accepting a push through the admin API
// (HTTP, the durable commit, no agent connected): one request per push,
// 64 requests in flight (as pushpeers publishes), against one request
// per 64 pushes (POST /v1/push/batch). Reported per push: wall time, and
// the CPU time of the process (server and client side together).
//
//	go test -run '^$' -bench Publish -benchtime 20000x ./internal/gateway
func BenchmarkPublish(b *testing.B) {
	_, api, _ := newTestGateway(b, "push:\n  listen: 127.0.0.1:0\n  auth: none\n")
	ctx := context.Background()
	data := "a push of about sixty-four bytes, as a management server sends"
	cpu := func() time.Duration {
		var ru syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	report := func(b *testing.B, start time.Duration) {
		b.ReportMetric(float64((cpu()-start).Microseconds())/float64(b.N), "cpu-µs/push")
	}
	b.Run("single", func(b *testing.B) {
		var n atomic.Int64
		start := cpu()
		b.SetParallelism(32) // 64 in flight on 2 cores
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				dev := fmt.Sprintf("dev-%d", n.Add(1)%10000)
				if err := api.Do(ctx, "POST", "/v1/devices/"+dev+"/push", PushRequest{Data: &data}, nil); err != nil {
					b.Error(err)
					return
				}
			}
		})
		report(b, start)
	})
	b.Run("batch64", func(b *testing.B) {
		start := cpu()
		var n int
		for i := 0; i < b.N; i += 64 {
			req := BatchRequest{}
			for j := 0; j < 64 && i+j < b.N; j++ {
				n++
				req.Pushes = append(req.Pushes, BatchPush{Device: fmt.Sprintf("dev-%d", n%10000), Data: &data})
			}
			if err := api.Do(ctx, "POST", "/v1/push/batch", req, nil); err != nil {
				b.Fatal(err)
			}
		}
		report(b, start)
	})
}
