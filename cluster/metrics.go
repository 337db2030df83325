package cluster

import "github.com/prometheus/client_golang/prometheus"

// Outbox drop reasons, the values of dpgate_cluster_outbox_dropped_total's
// reason label.
var dropReasons = []string{"full", "closed", "unreachable"}

// clusterMetrics are the membership's Prometheus series
// (docs/METRICS.md); memberlist's own come through go-metrics
// (internal/telemetry).
type clusterMetrics struct {
	members    prometheus.Gauge
	health     prometheus.Gauge
	left       prometheus.Counter
	failed     prometheus.Counter
	broadcasts prometheus.Counter
	redirects  prometheus.Counter
	rebalanced prometheus.Counter
	pingRTT    *prometheus.HistogramVec
}

func newClusterMetrics(reg prometheus.Registerer) *clusterMetrics {
	m := &clusterMetrics{
		members: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "dpgate_cluster_members",
			Help: "Nodes this node sees alive in the cluster, itself included (refreshed every cluster.refresh_interval).",
		}),
		health: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "dpgate_cluster_health_score",
			Help: "memberlist's awareness score of this node: 0 is healthy; higher means its own probes are failing (overloaded or cut off).",
		}),
		left:       counter("dpgate_cluster_nodes_left_total", "Nodes that left the cluster in good order."),
		failed:     counter("dpgate_cluster_nodes_failed_total", "Nodes declared dead after failed probes (their agents fail over)."),
		broadcasts: counter("dpgate_cluster_broadcasts_total", "State changes and messages queued for gossip to the other nodes."),
		redirects:  counter("dpgate_cluster_redirects_total", "New agents sent at HELLO to a less busy node."),
		rebalanced: counter("dpgate_cluster_rebalanced_agents_total", "Connected agents asked to move to a less busy node."),
		pingRTT: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "dpgate_cluster_ping_rtt_seconds",
			Help:    "Round trip of memberlist's probes to each node (the path between branch servers).",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5},
		}, []string{"node"}),
	}
	reg.MustRegister(m.members, m.health, m.left, m.failed, m.broadcasts, m.redirects, m.rebalanced, m.pingRTT)
	return m
}

// routerMetrics are the push routing's Prometheus series.
type routerMetrics struct {
	wakeRouted    prometheus.Counter
	wakeRelayed   prometheus.Counter
	storedRemote  prometheus.Counter
	routeFailed   *prometheus.CounterVec
	forwarded     prometheus.Counter
	staleRegs     prometheus.Counter
	repaired      prometheus.Counter
	rebalanced    prometheus.Counter
	handedOver    prometheus.Counter
	peerErrors    *prometheus.CounterVec
	outboxDropped *prometheus.CounterVec
}

func newRouterMetrics(reg prometheus.Registerer) *routerMetrics {
	m := &routerMetrics{
		wakeRouted:   counter("dpgate_cluster_wake_routed_total", "Wake-up requests sent to the node holding the device."),
		wakeRelayed:  counter("dpgate_cluster_wake_relayed_total", "Wake-up requests another node sent here and this node carried out."),
		storedRemote: counter("dpgate_cluster_route_stored_remote_total", "Push copies stored on other nodes (the device's owners and holder) before the push was answered."),
		routeFailed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dpgate_cluster_route_failed_total",
			Help: "Push copies a node did not take when asked (it failed or is unreachable); the push is still stored here and repaired later.",
		}, []string{"node"}),
		forwarded:  counter("dpgate_cluster_route_forwarded_total", "Pushes forwarded to the node the device is connected to."),
		staleRegs:  counter("dpgate_cluster_route_stale_registrations_total", "Registrations of a device's holder dropped as older than the one known."),
		repaired:   counter("dpgate_cluster_route_repaired_total", "Devices whose queued pushes were sent again to a holder that had missed them (anti-entropy)."),
		rebalanced: counter("dpgate_cluster_route_rebalanced_total", "Push copies moved to new owners after the node set changed."),
		handedOver: counter("dpgate_cluster_route_handed_over_total", "Push copies dropped here once handed to their owners (this node neither owns nor holds the device)."),
		peerErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dpgate_cluster_peer_errors_total",
			Help: "Failed requests to another node over the peer protocol.",
		}, []string{"node"}),
		outboxDropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dpgate_cluster_outbox_dropped_total",
			Help: "Operations for another node dropped from its outbox: full (the node is slow), closed (shutting down) or unreachable (repair sends them again).",
		}, []string{"reason"}),
	}
	for _, r := range dropReasons {
		m.outboxDropped.WithLabelValues(r)
	}
	reg.MustRegister(m.wakeRouted, m.wakeRelayed, m.storedRemote, m.routeFailed, m.forwarded, m.staleRegs,
		m.repaired, m.rebalanced, m.handedOver, m.peerErrors, m.outboxDropped)
	return m
}

func counter(name, help string) prometheus.Counter {
	return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
}

// declare makes the per-node series of a push node exist (at 0) from
// the moment the router sees it.
func (m *routerMetrics) declare(node string) {
	m.routeFailed.WithLabelValues(node)
	m.peerErrors.WithLabelValues(node)
}
