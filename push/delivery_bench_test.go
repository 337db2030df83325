//go:build unix

package push_test

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/dpgate/dpgate/push"
	"github.com/dpgate/dpgate/push/client"
)

// BenchmarkDelivery is a push accepted (journal write and fdatasync
// included) and delivered to a connected agent that ACKs it, all in one
// process over loopback TLS: the CPU of the whole process per push
// (server and agents alike) and, one push at a time, the time from Push
// to the agent's callback. "parallel" is 16 publishers at once; "to-all"
// is one PushEach to all 200 agents per op, done when the last has it.
//
//	go test -run '^$' -bench Delivery -count 5 ./push
func BenchmarkDelivery(b *testing.B) {
	const agents = 200
	ts := newTestServer(b, func(c *push.Config) { c.Auth, c.Keepalive = push.AuthNone, time.Minute })
	type arrival struct {
		payload string
		at      time.Time
	}
	arrived := make(chan arrival, 100000)
	devices := make([]string, agents)
	for i := range devices {
		devices[i] = fmt.Sprintf("bench-%03d", i)
		a := startAgent(b, client.Config{Servers: []string{ts.addr}, DeviceID: devices[i], TLS: ts.tlsFor(nil)})
		go func() {
			for m := range a.pushes {
				arrived <- arrival{string(m.Payload), time.Now()}
			}
		}()
	}
	waitFor(b, 30*time.Second, func() error {
		if n := ts.Sessions(); n != agents {
			return fmt.Errorf("%d of %d agents connected", n, agents)
		}
		return nil
	})
	cpu := func() time.Duration {
		var ru syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	await := func(b *testing.B, n int) {
		for range n {
			select {
			case <-arrived:
			case <-time.After(30 * time.Second):
				b.Fatal("a push did not arrive within 30 s")
			}
		}
	}

	b.Run("one", func(b *testing.B) {
		var lat []time.Duration
		cpu0 := cpu()
		for i := 0; b.Loop(); i++ {
			key := fmt.Sprintf("one-%d", i)
			start := time.Now()
			if _, err := ts.Push(devices[rand.IntN(agents)], []byte(key), time.Hour); err != nil {
				b.Fatal(err)
			}
			select {
			case a := <-arrived:
				if a.payload != key {
					b.Fatalf("got %q, want %q", a.payload, key)
				}
				lat = append(lat, a.at.Sub(start))
			case <-time.After(30 * time.Second):
				b.Fatal("the push did not arrive within 30 s")
			}
		}
		b.ReportMetric(float64((cpu()-cpu0).Microseconds())/float64(len(lat)), "cpu-us/push")
		slices.Sort(lat)
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-us")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-us")
	})
	b.Run("parallel", func(b *testing.B) {
		var n atomic.Int64
		cpu0 := cpu()
		b.SetParallelism(8) // 16 publishers on 2 cores
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				i := n.Add(1)
				if _, err := ts.Push(devices[rand.IntN(agents)], fmt.Appendf(nil, "par-%d", i), time.Hour); err != nil {
					b.Error(err)
					return
				}
			}
		})
		await(b, int(n.Load()))
		b.ReportMetric(float64((cpu()-cpu0).Microseconds())/float64(n.Load()), "cpu-us/push")
	})
	b.Run("to-all", func(b *testing.B) {
		n := 0
		cpu0 := cpu()
		for b.Loop() {
			payloads := make([][]byte, agents)
			for i := range payloads {
				payloads[i] = fmt.Appendf(nil, "all-%d-%d", n, i)
			}
			if _, err := ts.PushEach(devices, payloads, time.Hour); err != nil {
				b.Fatal(err)
			}
			await(b, agents)
			n += agents
		}
		b.ReportMetric(float64((cpu()-cpu0).Microseconds())/float64(n), "cpu-us/push")
	})
}
