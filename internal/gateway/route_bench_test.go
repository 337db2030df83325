package gateway

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/dpgate/dpgate/push/client"
	"github.com/dpgate/dpgate/push/wire"
	"github.com/dpgate/dpgate/tlsconf"
)

// BenchmarkPushLatency measures publish -> receive through the admin API
// of a 3-node in-process cluster (real loopback TCP, real fsyncs), one
// push at a time: published on the node the device is connected to
// (same-node) and on another node (cross-node, which commits on the
// device's two owners and forwards to the holder). The device is one
// whose owners are the other two nodes, so neither case gets the local
// shortcut of an owner that also holds the device.
//
//	go test -run '^$' -bench PushLatency -benchtime 2000x ./internal/gateway
func BenchmarkPushLatency(b *testing.B) {
	gs, apis := testCluster(b, 3)
	holderIdx := 0
	dev := ""
	for i := range 1000 {
		d := fmt.Sprintf("bench-%d", i)
		if !slices.Contains(gs[0].router.Owners(d), gs[holderIdx].cfg.Node.Name) {
			dev = d
			break
		}
	}
	got := make(chan time.Time, 1)
	pins, _ := tlsconf.ParsePins([]string{gs[holderIdx].Identity().Pin()})
	c, err := client.New(client.Config{Servers: []string{gs[holderIdx].pushAddr}, DeviceID: dev, TLS: tlsconf.PinnedClientConfig(pins, "gw"),
		OnPush: func(wire.Message) { got <- time.Now() }, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	defer func() { cancel(); <-done }()
	waitFor(b, 20*time.Second, func() error {
		for _, g := range gs {
			if r := g.router; !slices.Contains(r.Owners(dev), g.cfg.Node.Name) {
				continue
			}
			if g.router.Holder(dev) != gs[holderIdx].cfg.Node.Name {
				return fmt.Errorf("owner %s does not know the holder yet", g.cfg.Node.Name)
			}
		}
		return nil
	})
	for _, bc := range []struct {
		name string
		via  int
	}{{"same-node", holderIdx}, {"cross-node", 1}} {
		b.Run(bc.name, func(b *testing.B) {
			lat := make([]time.Duration, 0, b.N)
			data := "x"
			for b.Loop() {
				start := time.Now()
				if err := apis[bc.via].Do(ctx, "POST", "/v1/devices/"+dev+"/push", PushRequest{Data: &data}, nil); err != nil {
					b.Fatal(err)
				}
				select {
				case at := <-got:
					lat = append(lat, at.Sub(start))
				case <-time.After(10 * time.Second):
					b.Fatal("push not received within 10s")
				}
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-us")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-us")
		})
	}
}
