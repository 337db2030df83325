package push_test

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dpgate/dpgate/push"
	"github.com/dpgate/dpgate/push/client"
)

// BenchmarkConnectDuringFlood is a real agent's connect time (TLS, HELLO,
// WELCOME) while two other hosts (127.0.0.2 and .3) open about 1,200
// connections per second each, the flood the per-source limit is for; the
// accept budget is the default 2,000/s. source_rate=off is how it was.
func BenchmarkConnectDuringFlood(b *testing.B) {
	for _, tc := range []struct {
		name string
		rate float64
	}{{"source_rate=off", -1}, {"source_rate=200", 200}} {
		b.Run(tc.name, func(b *testing.B) {
			ts := newTestServer(b, func(c *push.Config) { c.Auth = push.AuthNone; c.SourceRate = tc.rate })
			ctx, stop := context.WithCancel(context.Background())
			var flood sync.WaitGroup
			var dialed atomic.Int64
			for _, src := range []string{"127.0.0.2", "127.0.0.3"} {
				for range 4 {
					flood.Add(1)
					go func() { // 300/s each, 4 per source
						defer flood.Done()
						d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: time.Second}
						tick := time.NewTicker(time.Second / 300)
						defer tick.Stop()
						for ctx.Err() == nil {
							<-tick.C
							if c, err := d.DialContext(ctx, "tcp", ts.addr); err == nil {
								dialed.Add(1)
								c.Close()
							}
						}
					}()
				}
			}
			time.Sleep(2 * time.Second) // let a queue build, if it does
			start := time.Now()
			var total time.Duration
			for i := 0; b.Loop(); i++ {
				t0 := time.Now()
				a := startAgent(b, client.Config{Servers: []string{ts.addr}, DeviceID: "real-agent", TLS: ts.tlsFor(nil)})
				a.waitEvent(b, "connected")
				total += time.Since(t0)
				a.cancel()
				<-a.done
			}
			rate := float64(dialed.Load()) / time.Since(start.Add(-2*time.Second)).Seconds()
			stop()
			flood.Wait()
			b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/connect")
			b.ReportMetric(rate, "flood-conns/s")
		})
	}
}
