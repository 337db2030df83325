package gateway

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"
)

// Handover stops this node serving so that a new process can take over
// its listening sockets and its store: an upgrade (cmd/dpgate hands the
// sockets over with cloudflare/tableflip; the new process waits in
// Options.BeforeStore until this returns). It marks the node draining,
// tells the push agents to reconnect after a pause of after to
// after+spread (by when the new process should serve; those back sooner
// wait in the listen backlog that the new process inherits), then stops
// accepting admin requests (waiting for those in flight) and proxy
// connections, which it served during the drain, stops gossiping
// without leaving the cluster (the new process rejoins under the same
// name, as after a quick restart, and keeps the queues) and closes the
// store. Proxy relays in flight go on: Shutdown waits for them, Close
// cuts them. ctx bounds the push drain and the admin requests.
func (g *Gateway) Handover(ctx context.Context, after, spread time.Duration) error {
	g.handedOver.Store(true)
	g.draining.Store(true)
	var errs []error
	if g.push != nil {
		if err := g.push.ShutdownAfter(ctx, after, spread); err != nil {
			errs = append(errs, fmt.Errorf("push drain: %w", err))
		}
	}
	// The proxy and the admin API go on accepting while the agents drain
	// (seconds with thousands of them): only the store is handed over,
	// and neither needs it for a new connection.
	if err := g.admin.HandOver(ctx); err != nil {
		g.admin.Close()
		errs = append(errs, fmt.Errorf("admin: %w", err))
	}
	if g.proxy != nil {
		g.proxy.StopAccepting()
	}
	if g.router != nil {
		g.router.Close()
	}
	if g.cluster != nil {
		if err := g.cluster.Close(); err != nil {
			errs = append(errs, fmt.Errorf("cluster: %w", err))
		}
	}
	// The UDP listeners, the uplink measurement and the memory watch stop
	// (each a serve loop); the store closes once every serve loop has
	// returned: it is ours alone.
	for _, p := range g.parts {
		switch p.name {
		case "wake", "links", "dns", "certificate", "memory":
			p.close()
		}
	}
	errs = append(errs, g.closeStore())
	relays := int64(0)
	if g.proxy != nil {
		relays = g.proxy.Status().Connections
	}
	g.log.Info("handed over: store closed, proxy relays continue", "relays", relays)
	return errors.Join(errs...)
}

// UpgradeStatus is the state of the last upgrade, in /v1/status.
type UpgradeStatus struct {
	State string    `json:"state"` // "handing over", "failed"
	Error string    `json:"error,omitempty"`
	At    time.Time `json:"at"`
}

// SetUpgrade records the state of the last upgrade for /v1/status.
func (g *Gateway) SetUpgrade(u UpgradeStatus) { g.upgrade.Store(&u) }

// pid is this process's id, in /v1/status: `dpgate upgrade` watches it
// change.
var pid = os.Getpid()
