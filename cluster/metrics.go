package cluster

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dpgate/dpgate/internal/series"
)

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
	d := series.On(reg)
	return &clusterMetrics{
		members:    d.Gauge("dpgate_cluster_members", "Nodes this node sees alive in the cluster, itself included (refreshed every cluster.refresh_interval)."),
		health:     d.Gauge("dpgate_cluster_health_score", "memberlist's awareness score of this node: 0 is healthy; higher means its own probes are failing (overloaded or cut off)."),
		left:       d.Counter("dpgate_cluster_nodes_left_total", "Nodes that left the cluster in good order."),
		failed:     d.Counter("dpgate_cluster_nodes_failed_total", "Nodes declared dead after failed probes (their agents fail over)."),
		broadcasts: d.Counter("dpgate_cluster_broadcasts_total", "State changes and messages queued for gossip to the other nodes."),
		redirects:  d.Counter("dpgate_cluster_redirects_total", "New agents sent at HELLO to a less busy node."),
		rebalanced: d.Counter("dpgate_cluster_rebalanced_agents_total", "Connected agents asked to move to a less busy node."),
		pingRTT: d.HistogramVec("dpgate_cluster_ping_rtt_seconds", "Round trip of memberlist's probes to each node (the path between branch servers).",
			[]float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5}, []string{"node"}),
	}
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
	d := series.On(reg)
	return &routerMetrics{
		wakeRouted:   d.Counter("dpgate_cluster_wake_routed_total", "Wake-up requests sent to the node holding the device."),
		wakeRelayed:  d.Counter("dpgate_cluster_wake_relayed_total", "Wake-up requests another node sent here and this node carried out."),
		storedRemote: d.Counter("dpgate_cluster_route_stored_remote_total", "Push copies stored on other nodes (the device's owners and holder) before the push was answered."),
		routeFailed: d.CounterVec("dpgate_cluster_route_failed_total",
			"Push copies a node did not take when asked (it failed or is unreachable); the push is still stored here and repaired later.", []string{"node"}),
		forwarded:  d.Counter("dpgate_cluster_route_forwarded_total", "Pushes forwarded to the node the device is connected to."),
		staleRegs:  d.Counter("dpgate_cluster_route_stale_registrations_total", "Registrations of a device's holder dropped as older than the one known."),
		repaired:   d.Counter("dpgate_cluster_route_repaired_total", "Devices whose queued pushes were sent again to a holder that had missed them (anti-entropy)."),
		rebalanced: d.Counter("dpgate_cluster_route_rebalanced_total", "Push copies moved to new owners after the node set changed."),
		handedOver: d.Counter("dpgate_cluster_route_handed_over_total", "Push copies dropped here once handed to their owners (this node neither owns nor holds the device)."),
		peerErrors: d.CounterVec("dpgate_cluster_peer_errors_total", "Failed requests to another node over the peer protocol.", []string{"node"}),
		outboxDropped: d.CounterVec("dpgate_cluster_outbox_dropped_total",
			"Operations for another node dropped from its outbox: full (the node is slow), closed (shutting down) or unreachable (repair sends them again).",
			[]string{"reason"}, dropReasons),
	}
}

// declare makes the per-node series of a push node exist (at 0) from
// the moment the router sees it.
func (m *routerMetrics) declare(node string) {
	m.routeFailed.WithLabelValues(node)
	m.peerErrors.WithLabelValues(node)
}
