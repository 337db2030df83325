package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"time"

	"github.com/dpgate/dpgate/cluster"
	"github.com/dpgate/dpgate/internal/admin"
	"github.com/dpgate/dpgate/push"
	"github.com/dpgate/dpgate/wake"
)

// newWake builds the wake-up service when the push server runs: it needs
// the device registry (addresses, MACs) and the push connections.
func (g *Gateway) newWake(ls Listeners) error {
	if g.push == nil {
		return nil
	}
	keys, err := wake.LoadOrCreateKeys(g.cfg.Node.DataDir, g.cfg.Wake.SecretFile)
	if err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	w, err := wake.New(wake.Config{
		Keys:       keys,
		Lookup:     g.wakeTarget,
		PushWake:   g.pushWake,
		AgentPort:  g.cfg.Wake.AgentPort,
		WOLPorts:   g.cfg.Wake.WOLPorts,
		SignHMAC:   g.cfg.Wake.Signature == wake.SignatureHMAC,
		OnShutdown: g.deviceShutDown,
		Registerer: g.tel.Registry,
		Logger:     g.log,
	})
	if err != nil {
		return err
	}
	g.wake = w
	g.wakeRoutes()
	p := part{name: "wake"}
	var socks []io.Closer
	if pc := ls.WakeUDP; pc != nil {
		g.wakeAddr = pc.LocalAddr().String()
		socks = append(socks, pc)
		p.serve = append(p.serve, func() error {
			g.log.Info("wake requests listening", "addr", pc.LocalAddr().String())
			return w.ServeRequests(pc)
		})
	}
	if pc := ls.ShutdownUDP; pc != nil {
		g.shutdownAddr = pc.LocalAddr().String()
		socks = append(socks, pc)
		p.serve = append(p.serve, func() error {
			g.log.Info("shutdown notices listening", "addr", pc.LocalAddr().String())
			return w.ServeShutdowns(pc)
		})
	}
	p.close = closeAll(socks...)
	g.add(p)
	return nil
}

// pushWake sends a WAKE frame on the device's push connection, here or,
// in a cluster, on the node it is connected to.
func (g *Gateway) pushWake(device string) (string, error) {
	if g.push.Wake(device) {
		return g.cfg.Node.Name, nil // the node whose push connection carried it
	}
	r := g.router
	if r == nil {
		return "", wake.ErrNotConnected
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	node, err := r.Wake(ctx, device)
	switch {
	case errors.Is(err, cluster.ErrNotHeld):
		return "", wake.ErrNotConnected
	case err != nil:
		g.log.Debug("no node sent a WAKE frame", "device", device, "err", err)
		return node, fmt.Errorf("a node that may hold the device did not answer: %w", err)
	}
	return node, nil
}

// wakeTarget is where a device was last: the address it reported in
// HELLO (its own, inside the LAN), else the one its connection came from.
func (g *Gateway) wakeTarget(device string) (wake.Target, bool) {
	d, ok := g.push.Device(device)
	if !ok {
		return wake.Target{}, false
	}
	var t wake.Target
	if a, err := netip.ParseAddr(d.LocalAddr); err == nil {
		t.Addr = a
	} else if ap, err := netip.ParseAddrPort(d.RemoteAddr); err == nil {
		t.Addr = ap.Addr().Unmap()
	}
	if mac, err := net.ParseMAC(d.MAC); err == nil {
		t.MAC = mac
	}
	return t, t.Addr.IsValid()
}

func (g *Gateway) deviceShutDown(device string, at time.Time) {
	if err := g.push.ShutDown(device, at); err != nil {
		g.log.Error("recording a shutdown notice", "device", device, "err", err)
	}
	if c := g.cluster; c != nil { // the other nodes learn it too
		b, _ := json.Marshal(shutdownMsg{Device: device, At: at.UTC()})
		c.Broadcast(b)
	}
}

// wakeOffline wakes, in the background, the devices of an accepted push
// that are connected nowhere as far as this node can tell: not here and,
// in a cluster, not registered with this node as an owner.
func (g *Gateway) wakeOffline(devices []string) {
	if g.wake == nil {
		return
	}
	r := g.router
	var offline []string
	for _, d := range devices {
		if g.push.Holds(d) {
			continue
		}
		if r != nil && (r.Holder(d) != "" || !slices.Contains(r.Owners(d), g.cfg.Node.Name)) {
			continue // connected elsewhere, or not ours to know
		}
		offline = append(offline, d)
	}
	if len(offline) == 0 {
		return
	}
	g.wakes.Add(1)
	go func() { // bounded by the service's rate limits; Shutdown and Close wait for it
		defer g.wakes.Done()
		for _, d := range offline {
			g.wake.Wake(d, "push")
		}
	}()
}

// DeviceReply is GET /v1/devices/{id}: the device and its last wake-up.
type DeviceReply struct {
	push.DeviceStatus
	LastWake *wake.Result `json:"last_wake,omitempty"`
	// In a cluster: the nodes that keep the device's queue, and the node
	// it is registered at as far as this node knows (when it is an owner).
	Owners []string `json:"owners,omitempty"`
	Holder string   `json:"holder,omitempty"`
}

func (g *Gateway) wakeRoutes() {
	g.admin.HandleJSON("POST /v1/devices/{id}/wake", func(r *http.Request) (int, any, error) {
		dev := r.PathValue("id")
		_, known := g.push.Device(dev)
		if !known && g.router == nil {
			return 0, nil, admin.Error(http.StatusNotFound, fmt.Errorf("device %q is unknown", dev))
		}
		res := g.wake.Wake(dev, "api") // in a cluster, also through the node it is connected to
		failed, unanswered := res.FailedPush()
		switch {
		case res.Limited:
			return 0, nil, admin.Error(http.StatusTooManyRequests, errors.New("wake-ups of this device (or in all) are over their rate limit; try again later"))
		case res.Unknown && unanswered: // not "connected to no node": it may be connected there
			return 0, nil, admin.Error(http.StatusGatewayTimeout, fmt.Errorf("device %q: %s, and no address is known here to wake it directly; try again", dev, failed.Err))
		case res.Unknown && !known:
			return 0, nil, admin.Error(http.StatusNotFound, fmt.Errorf("device %q is unknown here and connected to no node of the cluster", dev))
		case res.Unknown:
			return 0, nil, admin.Error(http.StatusConflict, fmt.Errorf("device %q has no known address to wake it at", dev))
		}
		return http.StatusOK, res, nil
	})
}
