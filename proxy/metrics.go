package proxy

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dpgate/dpgate/internal/series"
	"github.com/dpgate/dpgate/tlsconf"
)

// Label values, declared at start so every series exists (at 0) before
// its first event.
var (
	refuseReasons    = []string{"max_connections", "source_rate", "shutting_down"}
	handshakeReasons = append([]string{"tls", "timeout"}, tlsconf.RefusalLabels()...)
	relayEnds        = []string{"closed", "idle", "error"}
)

// metrics are the proxy's Prometheus series (docs/METRICS.md).
type metrics struct {
	acceptErrors  prometheus.Counter
	refused       *prometheus.CounterVec
	handshakes    prometheus.Counter
	evicted       prometheus.Counter
	handshakeFail *prometheus.CounterVec
	noUpstream    prometheus.Counter
	relaysEnded   *prometheus.CounterVec
	dial          *prometheus.HistogramVec
}

// latencyBuckets are the histogram buckets of network round trips and
// handshakes, in seconds: 0.5 ms to 10 s.
var latencyBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

func newMetrics(reg prometheus.Registerer, p *Proxy) *metrics {
	d := series.On(reg)
	m := &metrics{
		acceptErrors: d.Counter("dpgate_proxy_accept_errors_total",
			"Transient accept failures on the proxy listener (out of file descriptors and the like); the proxy backs off and keeps its relays."),
		refused: d.CounterVec("dpgate_proxy_refused_connections_total",
			"Agent connections closed unanswered by a limit: max_connections, source_rate (per-source rate) or shutting_down.",
			[]string{"reason"}, refuseReasons),
		handshakes: d.Counter("dpgate_proxy_handshakes_total", "Agent TLS handshakes completed."),
		evicted: d.Counter("dpgate_proxy_handshakes_evicted_total",
			"Agent connections still in their TLS handshake after a second, closed to make room for a new one at proxy.max_connections: connections that open and send nothing (a slowloris) cannot keep agents out."),
		handshakeFail: d.CounterVec("dpgate_proxy_handshake_failures_total",
			"Agent TLS handshakes that failed: tls (protocol error), timeout, or cert_* (client certificate refused by the allow-list: cert_unknown, cert_expired, cert_not-yet-valid, cert_no-certificate).",
			[]string{"reason"}, handshakeReasons),
		noUpstream: d.Counter("dpgate_proxy_no_upstream_total", "Agent connections closed because every upstream failed to connect."),
		relaysEnded: d.CounterVec("dpgate_proxy_relays_ended_total", "Relays ended, by how: closed (both sides finished), idle (idle timeout) or error.",
			[]string{"how"}, relayEnds),
		dial: d.HistogramVec("dpgate_proxy_upstream_dial_duration_seconds", "Time to connect to an upstream and complete TLS, successful dials only.",
			latencyBuckets, []string{"upstream"}),
	}
	d.GaugeFunc("dpgate_proxy_connections", "Agent connections the proxy holds now, handshakes included.",
		func() float64 { return float64(p.conns.Load()) })
	d.GaugeFunc("dpgate_proxy_max_connections", "The connection limit in force: proxy.max_connections, or lower when the process's open-files limit cannot hold it.",
		func() float64 { return float64(p.maxConns.Load()) })
	d.CounterFunc("dpgate_proxy_received_bytes_total", "Bytes relayed from agents to upstreams, counted as they flow.",
		func() float64 { return float64(p.bytesIn.Load()) })
	d.CounterFunc("dpgate_proxy_sent_bytes_total", "Bytes relayed from upstreams to agents, counted as they flow.",
		func() float64 { return float64(p.bytesOut.Load()) })
	d.Collector(upstreamCollector{p})
	return m
}

// upstreamCollector reports each configured upstream's state when
// scraped, so an upstream a reload removed leaves no series behind.
type upstreamCollector struct{ p *Proxy }

var (
	upActiveDesc = prometheus.NewDesc("dpgate_proxy_upstream_active_relays",
		"Relays in progress to the upstream, and dials reserved for one.", []string{"upstream"}, nil)
	upHealthyDesc = prometheus.NewDesc("dpgate_proxy_upstream_healthy",
		"1 while the upstream takes connections, 0 while ejected after failures.", []string{"upstream"}, nil)
	upRTTDesc = prometheus.NewDesc("dpgate_proxy_upstream_connect_rtt_seconds",
		"Smoothed TCP connect time to the upstream (gain 1/8, as TCP's SRTT); 0 until measured.", []string{"upstream"}, nil)
	upRelaysDesc = prometheus.NewDesc("dpgate_proxy_upstream_relays_total",
		"Relays to the upstream that started.", []string{"upstream"}, nil)
	upFailDesc = prometheus.NewDesc("dpgate_proxy_upstream_failures_total",
		"Failed dials and health checks to the upstream.", []string{"upstream"}, nil)
	upEjectDesc = prometheus.NewDesc("dpgate_proxy_upstream_ejections_total",
		"Times the upstream was ejected after consecutive failures.", []string{"upstream"}, nil)
	upRetransDesc = prometheus.NewDesc("dpgate_proxy_upstream_tcp_retransmits_total",
		"TCP segments retransmitted on relayed connections to the upstream (kernel TCP_INFO, read as each relay ends).", []string{"upstream"}, nil)
)

func (c upstreamCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{upActiveDesc, upHealthyDesc, upRTTDesc, upRelaysDesc, upFailDesc, upEjectDesc, upRetransDesc} {
		ch <- d
	}
}

func (c upstreamCollector) Collect(ch chan<- prometheus.Metric) {
	type sums struct {
		active, relays, fails, ejections, retrans float64
		healthy, rtt                              float64
	}
	now := time.Now()
	var order []string
	by := map[string]*sums{}
	// The same address configured twice is two upstreams and one series.
	for _, u := range c.p.upstreams() {
		s, ok := by[u.addr]
		if !ok {
			s = &sums{healthy: 1}
			by[u.addr] = s
			order = append(order, u.addr)
		}
		s.active += float64(u.active.Load())
		s.relays += float64(u.relays.Load())
		s.fails += float64(u.fails.Load())
		s.ejections += float64(u.ejections.Load())
		s.retrans += float64(u.tcpRetrans.Load())
		if u.ejected(now) {
			s.healthy = 0
		}
		s.rtt = time.Duration(u.rtt.Load()).Seconds()
	}
	for _, addr := range order {
		s := by[addr]
		ch <- prometheus.MustNewConstMetric(upActiveDesc, prometheus.GaugeValue, s.active, addr)
		ch <- prometheus.MustNewConstMetric(upHealthyDesc, prometheus.GaugeValue, s.healthy, addr)
		ch <- prometheus.MustNewConstMetric(upRTTDesc, prometheus.GaugeValue, s.rtt, addr)
		ch <- prometheus.MustNewConstMetric(upRelaysDesc, prometheus.CounterValue, s.relays, addr)
		ch <- prometheus.MustNewConstMetric(upFailDesc, prometheus.CounterValue, s.fails, addr)
		ch <- prometheus.MustNewConstMetric(upEjectDesc, prometheus.CounterValue, s.ejections, addr)
		ch <- prometheus.MustNewConstMetric(upRetransDesc, prometheus.CounterValue, s.retrans, addr)
	}
}
