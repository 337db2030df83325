package push

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dpgate/dpgate/internal/series"
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
	evicted       prometheus.Counter
	moved         prometheus.Counter
	shutdowns     prometheus.Counter
	accepted      prometheus.Counter
	copiesStored  prometheus.Counter
	publish       prometheus.Histogram
	journalWrite  prometheus.Histogram
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
	d := series.On(reg)
	var codes []string
	for code := wire.CodeProtocol; code <= wire.CodeTimeout; code++ {
		codes = append(codes, strconv.Itoa(int(code)))
	}
	tpt := []string{"transport"}
	m := &metrics{
		sessions: d.GaugeVec("dpgate_push_sessions", "Agent sessions open now (past HELLO and WELCOME), by transport.", tpt, transports),
		started:  d.CounterVec("dpgate_push_sessions_started_total", "Agent sessions started, by transport.", tpt, transports),
		refused: d.CounterVec("dpgate_push_refused_connections_total",
			"Connections refused by a limit before TLS: source_rate (push.source_rate per source address) or max_connections (push.max_connections; answered with ERROR 5 when there is room to).",
			[]string{"reason"}, []string{"source_rate", "max_connections"}),
		authFailed: d.CounterVec("dpgate_push_auth_failures_total",
			"Agents refused at authentication: tls (handshake failed), cert_* (client certificate refused by the allow-list), hello (HELLO's device id does not match its certificate or token).",
			[]string{"reason"}, append([]string{"tls", "hello"}, tlsconf.RefusalLabels()...)),
		errorsSent: d.CounterVec("dpgate_push_error_frames_sent_total",
			"ERROR frames sent to agents, by code (docs/PROTOCOL.md: 1 protocol, 2 version, 3 auth, 4 frame too large, 5 overloaded, 6 shutdown, 7 replaced, 8 timeout).",
			[]string{"code"}, codes),
		errorsRecv: d.CounterVec("dpgate_push_error_frames_received_total", "ERROR frames agents sent to close their session, by code.", []string{"code"}, codes),
		evicted: d.Counter("dpgate_push_handshakes_evicted_total",
			"Connections still in their handshake (TLS, or the QUIC stream, or HELLO) after a second, closed to make room for a new one at push.max_connections: connections that open and send nothing (a slowloris) cannot keep agents out."),
		redirects:    d.Counter("dpgate_push_redirects_total", "Agents told at HELLO to connect to a less busy node (REDIRECT reason 2)."),
		moved:        d.Counter("dpgate_push_moved_total", "Sessions asked to move to another node to even out the cluster's load."),
		shutdowns:    d.Counter("dpgate_push_shutdown_notices_total", "Shutdown notices received from agents (their connection ending is expected)."),
		accepted:     d.Counter("dpgate_push_accepted_total", "Pushes accepted: one per device, each stored durably before the API answered."),
		copiesStored: d.Counter("dpgate_push_copies_stored_total", "Copies of pushes stored here for devices held on this node, sent by the node that accepted them."),
		publish: d.Histogram("dpgate_push_publish_duration_seconds",
			"Time to accept a push (one or many devices): checks, the durable commit, and handing it to connected sessions.", storeBuckets),
		journalWrite: d.Histogram("dpgate_push_journal_write_duration_seconds",
			"Time of one write to the push queue's journal, its fdatasync included: the disk's part of accepting a push.", storeBuckets),
		ack: d.Histogram("dpgate_push_ack_duration_seconds",
			"Time from writing a push to an agent to its ACK, measured on the last push written to each session (the agent's round trip and processing).", rttBuckets),
		pathRTT: d.HistogramVec("dpgate_push_path_rtt_seconds",
			"Smoothed RTT of every session's path (kernel TCP_INFO or QUIC's estimate), one observation per session at each sampling (every 10 s).",
			rttBuckets, tpt, transports),
		pathLoss: d.GaugeVec("dpgate_push_path_loss_ratio",
			"Over the sessions sampled last: packets lost over packets sent (for TCP, segments retransmitted over segments sent).", tpt, transports),
		pathSampled:   d.GaugeVec("dpgate_push_path_sampled_sessions", "Sessions whose path figures the last sampling read.", tpt, transports),
		sessionsByTpt: map[string]prometheus.Gauge{},
	}
	for _, t := range transports {
		m.sessionsByTpt[t] = m.sessions.WithLabelValues(t)
	}
	d.GaugeFunc("dpgate_push_connections", "Connections the push port holds now, TLS handshakes and sessions included.",
		func() float64 { return float64(s.conns.Load()) })
	d.GaugeFunc("dpgate_push_max_connections", "The connection limit in force: push.max_connections, or lower when the process's open-files limit cannot hold it.",
		func() float64 { return float64(s.maxConns.Load()) })
	d.CounterFunc("dpgate_push_sent_total", "Pushes written to agents (a redelivery after a reconnect counts again).",
		func() float64 { return float64(s.sent.Load()) })
	d.CounterFunc("dpgate_push_delivered_total", "Pushes acknowledged by their agent and removed from the store.",
		func() float64 { return float64(s.delivered.Load()) })
	d.CounterFunc("dpgate_push_expired_total", "Pushes dropped undelivered when their TTL ran out.",
		func() float64 { return float64(s.queue.Expired()) })
	d.CounterFunc("dpgate_push_journal_writes_total", "Writes to the push queue's journal, each one fdatasync making every push it carries durable; pushes accepted per write show how well writes are shared.",
		func() float64 { return float64(s.queue.Stats().JournalWrites) })
	d.CounterFunc("dpgate_push_checkpoints_total", "Checkpoints of the push queue: a journal file emptied, the pushes it held unacknowledged for longer than 200 ms committed to the store, the younger ones written to the other file.",
		func() float64 { return float64(s.queue.Stats().Checkpoints) })
	d.GaugeFunc("dpgate_push_journal_bytes", "Bytes the push queue's journal files hold now (emptied at each checkpoint).",
		func() float64 { return float64(s.queue.Stats().JournalBytes) })
	d.Collector(depthCollector{s})
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
