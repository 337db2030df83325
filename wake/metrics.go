package wake

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dpgate/dpgate/internal/series"
)

// Label values, declared at start so every series exists (at 0) before
// its first event.
var (
	vias          = []string{"push", "datagram", "wol"}
	kinds         = []string{"request", "shutdown"}
	rejectReasons = []string{"truncated", "not_dpgate", "version", "malformed", "signature", "expired", "replay", "kind", "other"}
)

// metrics are the wake-up service's Prometheus series (docs/METRICS.md).
type metrics struct {
	limited  prometheus.Counter
	unknown  prometheus.Counter
	sent     *prometheus.CounterVec
	received *prometheus.CounterVec
	rejected *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	d := series.On(reg)
	return &metrics{
		limited: d.Counter("dpgate_wake_rate_limited_total", "Wake-ups not sent: over the per-device or total rate limit."),
		unknown: d.Counter("dpgate_wake_unknown_devices_total", "Wake-ups not sent: neither an address nor a MAC is known for the device."),
		sent: d.CounterVec("dpgate_wake_attempts_total",
			"Wake-up attempts, by how (push: a WAKE frame on the device's push connection, here or on another node; datagram: a signed datagram to the agent's UDP port; wol: a Wake-on-LAN magic packet) and result (ok, error).",
			[]string{"via", "result"}, vias, []string{"ok", "error"}),
		received: d.CounterVec("dpgate_wake_received_total",
			"Signed datagrams received and verified: wake-up requests from the management server, shutdown notices from agents.",
			[]string{"kind"}, kinds),
		rejected: d.CounterVec("dpgate_wake_rejected_total",
			"Datagrams refused, by kind and reason (truncated, not_dpgate, version, malformed, signature, expired, replay, kind, other).",
			[]string{"kind", "reason"}, kinds, rejectReasons),
	}
}
