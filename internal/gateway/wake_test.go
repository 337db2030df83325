package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dpgate/dpgate/internal/admin"
	"github.com/dpgate/dpgate/push/client"
	"github.com/dpgate/dpgate/push/wire"
	"github.com/dpgate/dpgate/tlsconf"
	"github.com/dpgate/dpgate/wake"
)

// TestWakeAPIAndRequests: a connected agent is woken through its push
// connection (a WAKE frame), an unknown device is a 404, and a signed
// request on wake.listen wakes a device while a forged one is refused and
// counted.
func TestWakeAPIAndRequests(t *testing.T) {
	t.Parallel()
	g, api, _ := newTestGateway(t, "push:\n  listen: 127.0.0.1:0\n  auth: none\n")
	ctx := context.Background()
	var wakes atomic.Int64
	pins, _ := tlsconf.ParsePins([]string{g.Identity().Pin()})
	c, err := client.New(client.Config{Servers: []string{g.pushAddr}, DeviceID: "pc-awake", TLS: tlsconf.PinnedClientConfig(pins, "gw"),
		OnPush: func(wire.Message) {}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		OnEvent: func(e client.Event) {
			if e.Kind == "wake" {
				wakes.Add(1)
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); c.Run(runCtx) }()
	defer func() { cancel(); <-done }()
	waitFor(t, 20*time.Second, func() error {
		if !g.push.Holds("pc-awake") {
			return errors.New("not connected yet")
		}
		return nil
	})

	var r wake.Result
	if err := api.Do(ctx, "POST", "/v1/devices/pc-awake/wake", struct{}{}, &r); err != nil {
		t.Fatal(err)
	}
	if len(r.Attempts) != 1 || r.Attempts[0].Via != "push" {
		t.Errorf("wake of a connected agent: %+v, want one attempt via push", r)
	}
	waitFor(t, 10*time.Second, func() error {
		if wakes.Load() != 1 {
			return fmt.Errorf("agent saw %d wake events, want 1", wakes.Load())
		}
		return nil
	})
	var he *admin.HTTPError
	if err := api.Do(ctx, "POST", "/v1/devices/nobody/wake", struct{}{}, nil); !errors.As(err, &he) || he.Status != http.StatusNotFound {
		t.Errorf("wake of an unknown device: %v, want 404", err)
	}

	// Requests on wake.listen: signed with the gateway's wake secret.
	conn, err := net.Dial("udp", g.wakeAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	forged := wake.NewDatagram(wake.KindRequest, "pc-awake", time.Now().UnixMilli())
	wake.SignHMAC(forged, []byte("not the gateway's wake secret"))
	b, _ := wake.Marshal(forged)
	conn.Write(b)
	good := wake.NewDatagram(wake.KindRequest, "pc-awake", time.Now().UnixMilli())
	wake.SignHMAC(good, g.wake.Keys().Secret)
	b, _ = wake.Marshal(good)
	conn.Write(b)
	waitFor(t, 10*time.Second, func() error {
		if wakes.Load() != 2 {
			return fmt.Errorf("agent saw %d wake events, want 2 (the API's and the request's)", wakes.Load())
		}
		return nil
	})
	waitFor(t, 10*time.Second, func() error { // recorded once the frame is sent
		if last, _ := g.wake.Last("pc-awake"); last.Reason != "request" {
			return fmt.Errorf("last wake-up %+v, want reason request", last)
		}
		return nil
	})
	body := metricsOf(t, api)
	for _, want := range []string{`dpgate_wake_rejected_total{kind="request",reason="signature"} 1`, `dpgate_wake_received_total{kind="request"} 1`, `dpgate_wake_attempts_total{result="ok",via="push"} 2`} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}
