package gateway

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/dpgate/dpgate/internal/admin"
	"github.com/dpgate/dpgate/push"
	"github.com/dpgate/dpgate/push/client"
	"github.com/dpgate/dpgate/push/wire"
	"github.com/dpgate/dpgate/tlsconf"
)

func TestPushAPI(t *testing.T) {
	t.Parallel()
	g, api, _ := newTestGateway(t, "push:\n  listen: 127.0.0.1:0\n  auth: none\n  max_payload: 64\n")
	ctx := context.Background()
	str := func(s string) *string { return &s }

	// An agent connected over the real listener.
	addr := g.pushAddr
	pins, _ := tlsconf.ParsePins([]string{g.Identity().Pin()})
	got := make(chan wire.Message, 10)
	c, err := client.New(client.Config{Servers: []string{addr}, DeviceID: "pc-1", TLS: tlsconf.PinnedClientConfig(pins, "gw"),
		OnPush: func(m wire.Message) { got <- m }, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); c.Run(runCtx) }()
	defer func() { cancel(); <-done }()
	waitForDevice := func(id string) {
		waitFor(t, 20*time.Second, func() error {
			var d push.DeviceStatus
			if err := api.Do(ctx, "GET", "/v1/devices/"+id, nil, &d); err != nil || !d.Connected {
				return fmt.Errorf("device %s not connected (%v)", id, err)
			}
			return nil
		})
	}
	waitForDevice("pc-1")

	var reply PushReply
	if err := api.Do(ctx, "POST", "/v1/devices/pc-1/push?wait=10s", PushRequest{Data: str("sync now")}, &reply); err != nil {
		t.Fatal(err)
	}
	if reply.Status != "delivered" || reply.Seq != 1 {
		t.Errorf("push with wait: %+v, want delivered seq 1", reply)
	}
	if m := <-got; string(m.Payload) != "sync now" {
		t.Errorf("agent got %q", m.Payload)
	}
	// Waiting on a push that expires undelivered says so, not "delivered".
	if err := api.Do(ctx, "POST", "/v1/devices/pc-offline/push?wait=2s", PushRequest{Data: str("x"), TTL: "50ms"}, &reply); err != nil || reply.Status != "expired" {
		t.Errorf("wait on a push that expires: %+v, %v; want status expired", reply, err)
	}
	// Offline device: queued, and visible as such.
	if err := api.Do(ctx, "POST", "/v1/devices/pc-2/push", PushRequest{DataBase64: str("AAEC"), TTL: "1h"}, &reply); err != nil || reply.Status != "queued" {
		t.Errorf("push to an offline device: %+v, %v", reply, err)
	}
	var d push.DeviceStatus
	if err := api.Do(ctx, "GET", "/v1/devices/pc-2", nil, &d); err != nil || d.Queued != 1 || d.Connected {
		t.Errorf("offline device status %+v, %v; want 1 queued", d, err)
	}
	// All known devices: pc-1 (connected once) is known.
	var bulk BulkReply
	if err := api.Do(ctx, "POST", "/v1/push", PushRequest{Data: str("all"), All: true}, &bulk); err != nil || bulk.Queued != 1 {
		t.Errorf("push to all: %+v, %v; want 1 queued (pc-1)", bulk, err)
	}
	if m := <-got; string(m.Payload) != "all" {
		t.Errorf("agent got %q from the broadcast", m.Payload)
	}
	if err := api.Do(ctx, "POST", "/v1/push", PushRequest{Data: str("x"), Devices: []string{"a", "b"}}, &bulk); err != nil || bulk.Queued != 2 {
		t.Errorf("push to a list: %+v, %v", bulk, err)
	}

	var he *admin.HTTPError
	bad := []struct {
		name   string
		path   string
		body   any
		status int
	}{
		{"payload over max_payload", "/v1/devices/pc-1/push", PushRequest{Data: str(strings.Repeat("x", 65))}, http.StatusRequestEntityTooLarge},
		{"bad ttl", "/v1/devices/pc-1/push", PushRequest{Data: str("x"), TTL: "soon"}, http.StatusBadRequest},
		{"both data forms", "/v1/devices/pc-1/push", PushRequest{Data: str("x"), DataBase64: str("eA==")}, http.StatusBadRequest},
		{"not JSON", "/v1/devices/pc-1/push", []byte("sync"), http.StatusBadRequest},
		{"no devices", "/v1/push", PushRequest{Data: str("x")}, http.StatusBadRequest},
	}
	for _, b := range bad {
		if err := api.Do(ctx, "POST", b.path, b.body, nil); !errors.As(err, &he) || he.Status != b.status {
			t.Errorf("%s: got %v, want status %d", b.name, err, b.status)
		}
	}
	if err := api.Do(ctx, "GET", "/v1/devices/nobody", nil, nil); !errors.As(err, &he) || he.Status != http.StatusNotFound {
		t.Errorf("unknown device: %v, want 404", err)
	}
}

// TestDeleteDevice: DELETE /v1/devices/{id} removes a device and its
// queue (the way out for an id nothing else could remove); an unknown id
// is 404.
func TestDeleteDevice(t *testing.T) {
	t.Parallel()
	_, api, _ := newTestGateway(t, "push:\n  listen: 127.0.0.1:0\n  auth: none\n")
	ctx := context.Background()
	data := "queued for nobody"
	var reply PushReply
	if err := api.Do(ctx, "POST", "/v1/devices/gone-1/push", PushRequest{Data: &data}, &reply); err != nil {
		t.Fatal(err)
	}
	var d map[string]any
	if err := api.Do(ctx, "GET", "/v1/devices/gone-1", nil, &d); err != nil || d["queued"] != float64(1) {
		t.Fatalf("before: %v, %v; want one queued", d, err)
	}
	if err := api.Do(ctx, "DELETE", "/v1/devices/gone-1", nil, nil); err != nil {
		t.Fatalf("DELETE: %v", err)
	}
	var he *admin.HTTPError
	if err := api.Do(ctx, "GET", "/v1/devices/gone-1", nil, &d); !errors.As(err, &he) || he.Status != 404 {
		t.Errorf("GET after DELETE: %v, want 404", err)
	}
	if err := api.Do(ctx, "DELETE", "/v1/devices/gone-1", nil, nil); !errors.As(err, &he) || he.Status != 404 {
		t.Errorf("second DELETE: %v, want 404", err)
	}
}

// TestPushBatch: POST /v1/push/batch accepts pushes with payloads of
// their own for several devices in one request (one commit here): each
// reply names its device with its own id and sequence, the connected
// agent gets its pushes in order, the offline device's wait in its queue;
// a bad item refuses the whole batch, naming it.
func TestPushBatch(t *testing.T) {
	t.Parallel()
	g, api, _ := newTestGateway(t, "push:\n  listen: 127.0.0.1:0\n  auth: none\n  max_payload: 64\n")
	ctx := context.Background()
	str := func(s string) *string { return &s }
	a := startTestAgent(t, "batch-on", g)
	waitFor(t, 20*time.Second, func() error {
		if !g.push.Holds("batch-on") {
			return errors.New("agent not connected yet")
		}
		return nil
	})
	var reply BulkReply
	err := api.Do(ctx, "POST", "/v1/push/batch", BatchRequest{Pushes: []BatchPush{
		{Device: "batch-on", Data: str("one")},
		{Device: "batch-off", DataBase64: str(base64.StdEncoding.EncodeToString([]byte("two")))},
		{Device: "batch-on", Data: str("three")},
	}}, &reply)
	if err != nil {
		t.Fatal(err)
	}
	if reply.Queued != 3 || len(reply.Pushes) != 3 || reply.Pushes[0].Device != "batch-on" || reply.Pushes[1].Device != "batch-off" ||
		reply.Pushes[0].Seq != 1 || reply.Pushes[2].Seq != 2 || reply.Pushes[1].Seq != 1 || reply.Pushes[0].ID == reply.Pushes[2].ID {
		t.Errorf("batch reply %+v", reply)
	}
	waitFor(t, 20*time.Second, func() error { return a.has("one", "three") })
	if d, ok := g.push.Device("batch-off"); !ok || d.Queued != 1 {
		t.Errorf("offline device %+v, want one push queued", d)
	}
	var he *admin.HTTPError
	for _, bad := range []struct {
		req    BatchRequest
		status int
	}{
		{BatchRequest{}, http.StatusBadRequest},
		{BatchRequest{Pushes: []BatchPush{{Device: "x", Data: str("a"), DataBase64: str("YQ==")}}}, http.StatusBadRequest},
		{BatchRequest{Pushes: []BatchPush{{Device: "x", Data: str("ok")}, {Device: "y", Data: str(strings.Repeat("z", 65))}}}, http.StatusRequestEntityTooLarge},
		{BatchRequest{Pushes: []BatchPush{{Device: "x", Data: str("ok")}}, TTL: "-1s"}, http.StatusBadRequest},
	} {
		if err := api.Do(ctx, "POST", "/v1/push/batch", bad.req, nil); !errors.As(err, &he) || he.Status != bad.status {
			t.Errorf("batch %+v: %v, want %d", bad.req, err, bad.status)
		}
	}
	if _, ok := g.push.Device("x"); ok {
		t.Error("a refused batch queued part of itself")
	}
}
