package queue

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dpgate/dpgate/internal/store"
	"github.com/dpgate/dpgate/push/wire"
)

// BenchmarkEnqueue is the cost of accepting one push durably: one
// journal write with fdatasync when pushes come one at a time (serial),
// shared by many when they come concurrently (parallel); and of a push
// to all of 15,000 devices, in one write (one op is the whole
// broadcast), also as the first push to each since start (their last
// sequences read from the tree).
func BenchmarkEnqueue(b *testing.B) {
	for _, first := range []bool{false, true} {
		name := "all-15000"
		if first {
			name += "-first"
		}
		b.Run(name, func(b *testing.B) {
			q, devs, payloads := knownDevices(b)
			for b.Loop() {
				if first {
					b.StopTimer()
					q.Close()
					q = openQueue(b, q.db)
					b.Cleanup(func() { q.Close() })
					b.StartTimer()
				}
				msgs, err := q.Enqueue(devs, payloads, time.Hour)
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				ackAll(b, q, devs, msgs)
				b.StartTimer()
			}
		})
	}
	for _, mode := range []string{"serial", "parallel-64"} {
		b.Run(mode, func(b *testing.B) {
			q, devs, payloads := knownDevices(b) // each push to one of them
			payload := payloads[0]
			if mode == "serial" {
				for i := 0; b.Loop(); i++ {
					if _, err := q.Enqueue([]string{devs[(i*7919)%len(devs)]}, [][]byte{payload}, time.Hour); err != nil {
						b.Fatal(err)
					}
				}
				return
			}
			b.SetParallelism(32) // 64 goroutines on 2 cores
			var n atomic.Int64
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					i := int(n.Add(1))
					if _, err := q.Enqueue([]string{devs[(i*7919)%len(devs)]}, [][]byte{payload}, time.Hour); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}

// knownDevices is a queue of 15,000 devices (the pushpeers size), each
// of which had a push, all acknowledged: as in service. It is closed
// with the benchmark.
func knownDevices(b *testing.B) (q *Queue, devs []string, payloads [][]byte) {
	db, err := store.Open(b.TempDir(), store.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { db.Close() })
	q = openQueue(b, db)
	b.Cleanup(func() { q.Close() }) // before the store's (last in, first out)
	devs = make([]string, 15000)
	payloads = make([][]byte, len(devs))
	for i := range devs {
		devs[i], payloads[i] = fmt.Sprint("agent-", i), make([]byte, 64)
	}
	msgs, err := q.Enqueue(devs, payloads, time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	ackAll(b, q, devs, msgs)
	if err := q.Checkpoint(); err != nil { // every device's sequence in the tree
		b.Fatal(err)
	}
	return q, devs, payloads
}

// ackAll acknowledges msgs (msgs[i] for devs[i]) and commits the deletions.
func ackAll(b *testing.B, q *Queue, devs []string, msgs []wire.Message) {
	for i, m := range msgs {
		q.Ack(devs[i], m.Seq)
	}
	if err := q.Flush(); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkExpireBeside is the expiry sweep over 15,000 devices (the
// pushpeers size; each had pushes, all acknowledged, as after a push to
// all) and what it costs the pushes accepted meanwhile: the slowest
// Enqueue while sweeps run back to back (max-enqueue-ms). "none": no
// sweep (the loop sleeps 10 ms instead); "scan": each sweep reads every
// device (as when something may be due); "due-later": nothing can have
// expired yet, as between a push and its TTL. A sweep that holds the
// store's one write transaction for its whole scan makes every push wait
// for it.
func BenchmarkExpireBeside(b *testing.B) {
	for _, mode := range []string{"none", "scan", "due-later"} {
		b.Run(mode, func(b *testing.B) { benchExpireBeside(b, mode) })
	}
}

func benchExpireBeside(b *testing.B, mode string) {
	q, devs, payloads := knownDevices(b)
	stop := make(chan struct{})
	done := make(chan time.Duration)
	go func() {
		var worst time.Duration
		for i := 0; ; i++ {
			select {
			case <-stop:
				done <- worst
				return
			default:
			}
			t0 := time.Now()
			if _, err := q.Enqueue([]string{devs[i%len(devs)]}, [][]byte{payloads[0]}, time.Hour); err != nil {
				b.Error(err)
			}
			worst = max(worst, time.Since(t0))
			time.Sleep(500 * time.Microsecond) // 2,000 pushes/s at most
		}
	}()
	for b.Loop() {
		switch mode {
		case "none":
			time.Sleep(10 * time.Millisecond)
			continue
		case "scan":
			q.forgetExpiry()
		}
		if _, err := q.Expire(); err != nil {
			b.Fatal(err)
		}
	}
	close(stop)
	b.ReportMetric(float64(<-done)/1e6, "max-enqueue-ms")
}

// BenchmarkFlush is committing the deletions of acknowledged pushes
// among 15,000 devices: per op, n of them (spread over every device page,
// as the ACKs of a push to all arrive in any order).
func BenchmarkFlush(b *testing.B) {
	for _, n := range []int{100, 1000, 15000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			q, devs, payloads := knownDevices(b)
			for b.Loop() {
				b.StopTimer()
				msgs, err := q.Enqueue(devs, payloads, time.Hour)
				if err != nil {
					b.Fatal(err)
				}
				if err := q.Checkpoint(); err != nil { // in the tree, to be deleted there
					b.Fatal(err)
				}
				for i := 0; i < n; i++ {
					j := i * len(devs) / n
					q.Ack(devs[j], msgs[j].Seq)
				}
				b.StartTimer()
				if err := q.Flush(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
