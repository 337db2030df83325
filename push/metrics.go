package push

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dpgate/dpgate/push/wire"
	"github.com/dpgate/dpgate/tlsconf"
)

// Transports are the values of the transport label.
var transports = []string{"tls", "quic"}

// metrics are the push server's Prometheus series (docs/METRICS.md).
// Every label value is declared at start, so each series exists (at 0)
// before its first event.
type metrics struct {
	sessions      *prometheus.GaugeVec
	started       *prometheus.CounterVec
	refused       *prometheus.CounterVec
	authFailed    *prometheus.CounterVec
	errorsSent    *prometheus.CounterVec
	errorsRecv    *prometheus.CounterVec
	redirects     prometheus.Counter
	moved         prometheus.Counter
	shutdowns     prometheus.Counter
	accepted      prometheus.Counter
	copiesStored  prometheus.Counter
	publish       prometheus.Histogram
	ack           prometheus.Histogram
	pathRTT       *prometheus.HistogramVec
	pathLoss      *prometheus.GaugeVec
	pathSampled   *prometheus.GaugeVec
	sessionsByTpt map[string]prometheus.Gauge
}

// Buckets in seconds: storeBuckets for a durable commit (fsync: 0.1 ms
// on fast flash to a second on a busy disk), rttBuckets for round trips
// over a LAN or WAN.
var (
	storeBuckets = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1}
	rttBuckets   = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}
)

func newMetrics(reg prometheus.Registerer, s *Server) *metrics {
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
	}
	m := &metrics{
		sessions: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "dpgate_push_sessions",
			Help: "Agent sessions open now (past HELLO and WELCOME), by transport.",
		}, []string{"transport"}),
		started: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dpgate_push_sessions_started_total",
			Help: "Agent sessions started, by transport.",
		}, []string{"transport"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dpgate_push_refused_connections_total",
			Help: "Connections refused by a limit before TLS: source_rate (push.source_rate per source address) or max_connections (push.max_connections; answered with ERROR 5 when there is room to).",
		}, []string{"reason"}),
		authFailed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dpgate_push_auth_failures_total",
			Help: "Agents refused at authentication: tls (handshake failed), cert_* (client certificate refused by the allow-list), hello (HELLO's device id does not match its certificate or token).",
		}, []string{"reason"}),
		errorsSent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dpgate_push_error_frames_sent_total",
			Help: "ERROR frames sent to agents, by code (docs/PROTOCOL.md: 1 protocol, 2 version, 3 auth, 4 frame too large, 5 overloaded, 6 shutdown, 7 replaced, 8 timeout).",
		}, []string{"code"}),
		errorsRecv: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dpgate_push_error_frames_received_total",
			Help: "ERROR frames agents sent to close their session, by code.",
		}, []string{"code"}),
		redirects:    counter("dpgate_push_redirects_total", "Agents told at HELLO to connect to a less busy node (REDIRECT reason 2)."),
		moved:        counter("dpgate_push_moved_total", "Sessions asked to move to another node to even out the cluster's load."),
		shutdowns:    counter("dpgate_push_shutdown_notices_total", "Shutdown notices received from agents (their connection ending is expected)."),
		accepted:     counter("dpgate_push_accepted_total", "Pushes accepted: one per device, each stored durably before the API answered."),
		copiesStored: counter("dpgate_push_copies_stored_total", "Copies of pushes stored here for devices held on this node, sent by the node that accepted them."),
		publish: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "dpgate_push_publish_duration_seconds",
			Help:    "Time to accept a push (one or many devices): checks, the durable commit, and handing it to connected sessions.",
			Buckets: storeBuckets,
		}),
		ack: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "dpgate_push_ack_duration_seconds",
			Help:    "Time from writing a push to an agent to its ACK, measured on the last push written to each session (the agent's round trip and processing).",
			Buckets: rttBuckets,
		}),
		pathRTT: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "dpgate_push_path_rtt_seconds",
			Help:    "Smoothed RTT of every session's path (kernel TCP_INFO or QUIC's estimate), one observation per session at each sampling (push.path_interval).",
			Buckets: rttBuckets,
		}, []string{"transport"}),
		pathLoss: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "dpgate_push_path_loss_ratio",
			Help: "Over the sessions sampled last: packets lost over packets sent (for TCP, segments retransmitted over segments sent).",
		}, []string{"transport"}),
		pathSampled: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "dpgate_push_path_sampled_sessions",
			Help: "Sessions whose path figures the last sampling read.",
		}, []string{"transport"}),
		sessionsByTpt: map[string]prometheus.Gauge{},
	}
	for _, t := range transports {
		m.sessionsByTpt[t] = m.sessions.WithLabelValues(t)
		m.started.WithLabelValues(t)
		m.pathRTT.WithLabelValues(t)
		m.pathLoss.WithLabelValues(t)
		m.pathSampled.WithLabelValues(t)
	}
	for _, r := range []string{"source_rate", "max_connections"} {
		m.refused.WithLabelValues(r)
	}
	for _, r := range append([]string{"tls", "hello"}, tlsconf.RefusalLabels()...) {
		m.authFailed.WithLabelValues(r)
	}
	for code := wire.CodeProtocol; code <= wire.CodeTimeout; code++ {
		m.errorsSent.WithLabelValues(strconv.Itoa(int(code)))
		m.errorsRecv.WithLabelValues(strconv.Itoa(int(code)))
	}
	reg.MustRegister(m.sessions, m.started, m.refused, m.authFailed, m.errorsSent, m.errorsRecv,
		m.redirects, m.moved, m.shutdowns, m.accepted, m.copiesStored, m.publish, m.ack,
		m.pathRTT, m.pathLoss, m.pathSampled,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "dpgate_push_connections",
			Help: "Connections the push port holds now, TLS handshakes and sessions included.",
		}, func() float64 { return float64(s.conns.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "dpgate_push_sent_total",
			Help: "Pushes written to agents (a redelivery after a reconnect counts again).",
		}, func() float64 { return float64(s.sent.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "dpgate_push_delivered_total",
			Help: "Pushes acknowledged by their agent and removed from the store.",
		}, func() float64 { return float64(s.delivered.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "dpgate_push_expired_total",
			Help: "Pushes dropped undelivered when their TTL ran out.",
		}, func() float64 { return float64(s.queue.Expired()) }),
		depthCollector{s},
	)
	return m
}

// depthCollector reads the store's queue depth when scraped (one read
// transaction).
type depthCollector struct{ s *Server }

var (
	queuedDesc = prometheus.NewDesc("dpgate_push_queued_messages",
		"Pushes stored here and not yet acknowledged (expired ones not yet swept included).", nil, nil)
	queuedDevicesDesc = prometheus.NewDesc("dpgate_push_queued_devices",
		"Devices with at least one push stored here.", nil, nil)
)

func (c depthCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- queuedDesc
	ch <- queuedDevicesDesc
}

func (c depthCollector) Collect(ch chan<- prometheus.Metric) {
	pushes, devices := c.s.queue.Depth()
	ch <- prometheus.MustNewConstMetric(queuedDesc, prometheus.GaugeValue, float64(pushes))
	ch <- prometheus.MustNewConstMetric(queuedDevicesDesc, prometheus.GaugeValue, float64(devices))
}

// errorSent counts an ERROR frame sent to an agent.
func (m *metrics) errorSent(code uint16) {
	m.errorsSent.WithLabelValues(strconv.Itoa(int(code))).Inc()
}
