package wake

import "github.com/prometheus/client_golang/prometheus"

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
	m := &metrics{
		limited: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "dpgate_wake_rate_limited_total",
			Help: "Wake-ups not sent: over the per-device or total rate limit.",
		}),
		unknown: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "dpgate_wake_unknown_devices_total",
			Help: "Wake-ups not sent: neither an address nor a MAC is known for the device.",
		}),
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dpgate_wake_attempts_total",
			Help: "Wake-up attempts, by how (push: a WAKE frame on the device's push connection, here or on another node; datagram: a signed datagram to the agent's UDP port; wol: a Wake-on-LAN magic packet) and result (ok, error).",
		}, []string{"via", "result"}),
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dpgate_wake_received_total",
			Help: "Signed datagrams received and verified: wake-up requests from the management server, shutdown notices from agents.",
		}, []string{"kind"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dpgate_wake_rejected_total",
			Help: "Datagrams refused, by kind and reason (truncated, not_dpgate, version, malformed, signature, expired, replay, kind, other).",
		}, []string{"kind", "reason"}),
	}
	for _, v := range vias {
		m.sent.WithLabelValues(v, "ok")
		m.sent.WithLabelValues(v, "error")
	}
	for _, k := range kinds {
		m.received.WithLabelValues(k)
		for _, r := range rejectReasons {
			m.rejected.WithLabelValues(k, r)
		}
	}
	reg.MustRegister(m.limited, m.unknown, m.sent, m.received, m.rejected)
	return m
}
