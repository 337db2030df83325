package gateway

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dpgate/dpgate/internal/ratelimit"
	"github.com/dpgate/dpgate/internal/series"
	"github.com/dpgate/dpgate/internal/store"
	"github.com/dpgate/dpgate/link"
)

// metrics are the gateway's own series (docs/METRICS.md); each part
// registers its own in the same registry.
type metrics struct {
	reloads        *prometheus.CounterVec
	reloadOK       prometheus.Gauge
	reloadOKAt     prometheus.Gauge
	underCopied    prometheus.Counter
	verdictChanges *prometheus.CounterVec
	authFailures   *prometheus.CounterVec
	// authLog keeps the warning of refused tokens to one line in 10 s
	// per way in (api, console).
	authLog map[string]*ratelimit.Every
}

func (g *Gateway) newMetrics() {
	d := series.On(g.tel.Registry)
	m := &metrics{
		reloads: d.CounterVec("dpgate_config_reloads_total",
			"Reloads (SIGHUP, POST /v1/reload, the console), by result: ok, or failed (the previous settings stay).",
			[]string{"result"}, []string{"ok", "failed"}),
		reloadOK: d.Gauge("dpgate_config_last_reload_successful", "1 if the last reload applied (or none was tried since start), 0 if it failed."),
		reloadOKAt: d.Gauge("dpgate_config_last_reload_success_timestamp_seconds",
			"When the configuration last loaded successfully (start or reload), as a Unix time."),
		underCopied: d.Counter("dpgate_push_under_replicated_total",
			"Pushes answered 503 because fewer nodes than cluster.min_copies committed them (kept here and handed over later)."),
		verdictChanges: d.CounterVec("dpgate_link_verdict_changes_total",
			"Changes of an uplink's verdict, by the verdict it changed to (ok, degraded, out-of-limits, unknown).", []string{"link", "to"}),
		authFailures: d.CounterVec("dpgate_admin_auth_failures_total",
			"Admin requests refused for a missing or wrong token (via api), and console sign-ins with a wrong token (via console).",
			[]string{"via"}, []string{"api", "console"}),
		authLog: map[string]*ratelimit.Every{"api": ratelimit.NewEvery(10 * time.Second), "console": ratelimit.NewEvery(10 * time.Second)},
	}
	m.reloadOK.Set(1)
	m.reloadOKAt.Set(float64(time.Now().Unix()))
	g.m = m
	d.Collector(linkCollector{g})
	g.storeMetrics(d) // read when scraped, by then the store is open
}

// reloaded records a reload's result.
func (m *metrics) reloaded(err error) {
	if err != nil {
		m.reloads.WithLabelValues("failed").Inc()
		m.reloadOK.Set(0)
		return
	}
	m.reloads.WithLabelValues("ok").Inc()
	m.reloadOK.Set(1)
	m.reloadOKAt.Set(float64(time.Now().Unix()))
}

// storeMetrics declares the store's counters, read when scraped.
func (g *Gateway) storeMetrics(d series.Decl) {
	for _, c := range []struct {
		name, help string
		value      func(store.Stats) uint64
	}{
		{"dpgate_store_corrupt_records_total", "Stored records that failed their checksum since start: skipped, kept aside in the store, never delivered or used.",
			func(s store.Stats) uint64 { return s.CorruptRecords }},
		{"dpgate_store_failures_total", "Store calls since start that hit damaged pages and failed (each alone; the gateway goes on).",
			func(s store.Stats) uint64 { return s.Failures }},
		{"dpgate_store_commits_total", "Write transactions committed since start, each made durable with two fdatasyncs (pushes are made durable in the push queue's journal, and reach the store at its checkpoints).",
			func(s store.Stats) uint64 { return s.Commits }},
		{"dpgate_store_page_writes_total", "Writes of pages (or runs of adjacent pages) by those commits since start: what each fdatasync makes durable.",
			func(s store.Stats) uint64 { return s.PageWrites }},
	} {
		d.CounterFunc(c.name, c.help, func() float64 { return float64(c.value(g.db.Stats())) })
	}
}

// linkCollector reports each measured uplink's figures over its window
// when scraped.
type linkCollector struct{ g *Gateway }

var (
	linkLossDesc = prometheus.NewDesc("dpgate_link_loss_ratio",
		"Probe loss over the uplink's window (link.window), by direction: round_trip, out (towards the reflector), back.", []string{"link", "direction"}, nil)
	linkRTTDesc = prometheus.NewDesc("dpgate_link_rtt_median_seconds",
		"Median round trip of the uplink's probes over the window.", []string{"link"}, nil)
	linkRTT99Desc = prometheus.NewDesc("dpgate_link_rtt_p99_seconds",
		"99th percentile round trip of the uplink's probes over the window.", []string{"link"}, nil)
	linkJitterDesc = prometheus.NewDesc("dpgate_link_jitter_seconds",
		"Mean difference between consecutive round trips (RFC 3550 jitter) over the window.", []string{"link"}, nil)
	linkVerdictDesc = prometheus.NewDesc("dpgate_link_verdict",
		"The uplink's verdict against link.limits: 0 ok, 1 degraded (above 90 % of a limit), 2 out of limits, -1 unknown (too few probes yet).", []string{"link"}, nil)
	linkLimitLossDesc = prometheus.NewDesc("dpgate_link_limit_loss_ratio",
		"The loss limit the uplinks are measured against (link.limits.loss).", nil, nil)
	linkLimitDelayDesc = prometheus.NewDesc("dpgate_link_limit_delay_seconds",
		"The round-trip limit the uplinks are measured against (link.limits.delay).", nil, nil)
)

func (c linkCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{linkLossDesc, linkRTTDesc, linkRTT99Desc, linkJitterDesc, linkVerdictDesc, linkLimitLossDesc, linkLimitDelayDesc} {
		ch <- d
	}
}

func (c linkCollector) Collect(ch chan<- prometheus.Metric) {
	lim := c.g.cfg.Link.Limits
	ch <- prometheus.MustNewConstMetric(linkLimitLossDesc, prometheus.GaugeValue, float64(lim.Loss))
	ch <- prometheus.MustNewConstMetric(linkLimitDelayDesc, prometheus.GaugeValue, lim.Delay.D().Seconds())
	for _, m := range c.g.links {
		st := m.Status()
		gauge := func(d *prometheus.Desc, v float64, labels ...string) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, append([]string{st.Name}, labels...)...)
		}
		gauge(linkLossDesc, st.Stats.Loss, "round_trip")
		gauge(linkLossDesc, st.Stats.LossOut, "out")
		gauge(linkLossDesc, st.Stats.LossBack, "back")
		gauge(linkRTTDesc, st.Stats.RTTP50.Seconds())
		gauge(linkRTT99Desc, st.Stats.RTTP99.Seconds())
		gauge(linkJitterDesc, st.Stats.Jitter.Seconds())
		gauge(linkVerdictDesc, verdictValue(st.Verdict))
	}
}

// verdictValue is the metric form: 0 ok, 1 degraded, 2 out of limits, -1
// unknown.
func verdictValue(s link.State) float64 {
	switch s {
	case link.OK:
		return 0
	case link.Degraded:
		return 1
	case link.OutOfLimits:
		return 2
	}
	return -1
}

// authFailed counts a request refused for its admin token (via api or
// console) and warns of it, at most once in 10 s per way in: a local user
// guessing tokens makes thousands a second.
func (g *Gateway) authFailed(via, remote string) {
	g.m.authFailures.WithLabelValues(via).Inc()
	g.m.authLog[via].Do(1, func(n int64) {
		msg := "admin: requests with a wrong token or none were refused"
		if via == "console" {
			msg = "console: sign-in with a wrong token"
		}
		g.log.Warn(msg, "remote", remote, "refused_since_last_line", n)
	})
}
