package gateway

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/dpgate/dpgate/internal/series"
	"github.com/dpgate/dpgate/link"
)

// newLinks builds the uplink part: the STAMP reflector when
// link.reflector_listen is set, and a monitor of every upstream that
// names a reflector (proxy.upstreams[].probe), measured against
// link.limits: each verdict change is logged, steers the proxy and shows
// in /v1/links, /v1/status, the metrics and the cluster metadata.
func (g *Gateway) newLinks(ls Listeners) error {
	lc := g.cfg.Link
	if g.cfg.ProxyEnabled() {
		for _, u := range g.cfg.Proxy.Upstreams {
			if u.Probe == "" {
				continue
			}
			g.links = append(g.links, link.NewMonitor(link.MonitorConfig{
				Name: u.Address, Target: u.Probe,
				Interval: lc.ProbeInterval.D(), Window: lc.Window.D(),
				Limits:   link.Limits{Loss: float64(lc.Limits.Loss), Delay: lc.Limits.Delay.D()},
				OnChange: g.linkChanged,
				Logger:   g.log,
			}))
			for _, s := range []link.State{link.OK, link.Degraded, link.OutOfLimits, link.Unknown} {
				g.m.verdictChanges.WithLabelValues(u.Address, string(s))
			}
		}
	}
	g.linkRoutes()
	ctx, stop := context.WithCancel(context.Background())
	p := part{name: "links", start: func() error { g.startLinks(ctx); return nil }}
	p.close = func() error { stop(); return nil }
	if refl := ls.Reflector; refl != nil {
		g.reflectorAddr = refl.LocalAddr().String()
		r := &link.Reflector{}
		d := series.On(g.tel.Registry)
		d.CounterFunc("dpgate_link_reflector_answered_total", "STAMP test packets the reflector (link.reflector_listen) answered.",
			func() float64 { return float64(r.Reflected.Load()) })
		d.CounterFunc("dpgate_link_reflector_stateless_total", fmt.Sprintf("Of the packets answered, those answered without a session: the reflector numbered %d senders already (a flood from many sources), so their senders cannot tell which way a probe was lost.", link.DefaultMaxSessions),
			func() float64 { return float64(r.Stateless.Load()) })
		d.CounterFunc("dpgate_link_reflector_dropped_total", "Datagrams on the reflector's port too short to be STAMP test packets, not answered.",
			func() float64 { return float64(r.Dropped.Load()) })
		d.GaugeFunc("dpgate_link_reflector_sessions", "Senders the reflector numbers now (each address and port that probed it in the last minute).",
			func() float64 { return float64(r.Sessions()) })
		p.serve = append(p.serve, func() error {
			g.log.Info("STAMP reflector listening", "addr", g.reflectorAddr)
			return r.Serve(refl)
		})
		p.close = func() error { stop(); refl.Close(); return nil }
	}
	g.add(p)
	return nil
}

// startLinks runs the monitors and their gauges until ctx ends.
func (g *Gateway) startLinks(ctx context.Context) {
	if len(g.links) == 0 {
		return
	}
	for _, m := range g.links {
		g.wg.Add(1)
		go func() { defer g.wg.Done(); m.Run(ctx) }() // ends when the part closes
	}
	lc := g.cfg.Link
	g.log.Info("measuring uplinks", "links", len(g.links), "probe_interval", lc.ProbeInterval.D().String(), "window", lc.Window.D().String(),
		"limit_loss", float64(lc.Limits.Loss), "limit_delay", lc.Limits.Delay.D().String())
	g.wg.Add(1)
	go func() { // the console's history; ends when the part closes
		defer g.wg.Done()
		t := time.NewTicker(5 * time.Second)
		defer t.Stop()
		var sampled time.Time
		for {
			select {
			case <-ctx.Done():
				return
			case now := <-t.C:
				if now.Sub(sampled) >= linkSampleEvery {
					g.linkHist.record(now, g.linkStatus())
					sampled = now
				}
			}
		}
	}()
}

func (g *Gateway) linkChanged(name string, from, to link.State, _ link.Stats) {
	g.proxy.SetLinkOutOfLimits(name, to == link.OutOfLimits)
	g.m.verdictChanges.WithLabelValues(name, string(to)).Inc()
}

// linkStatus lists the measured links.
func (g *Gateway) linkStatus() []link.Status {
	out := make([]link.Status, 0, len(g.links))
	for _, m := range g.links {
		out = append(out, m.Status())
	}
	return out
}

// uplinkVerdict is the worst verdict of the measured links, for the
// cluster metadata ("" when nothing is measured).
func (g *Gateway) uplinkVerdict() string {
	worst := ""
	rank := map[string]int{"": 0, string(link.Unknown): 1, string(link.OK): 2, string(link.Degraded): 3, string(link.OutOfLimits): 4}
	for _, m := range g.links {
		if v := string(m.Verdict()); rank[v] > rank[worst] {
			worst = v
		}
	}
	return worst
}

func (g *Gateway) linkRoutes() {
	g.admin.HandleJSON("GET /v1/links", func(*http.Request) (int, any, error) {
		return http.StatusOK, map[string]any{"links": g.linkStatus()}, nil
	})
}
