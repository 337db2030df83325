package telemetry

import (
	"strings"
	"sync"

	metrics "github.com/hashicorp/go-metrics"
	"github.com/prometheus/client_golang/prometheus"
)

// A memberlistSeries is the Prometheus series one of memberlist's
// go-metrics keys becomes: counters get _total, timers (milliseconds)
// become histograms in seconds, sizes say _bytes. go-metrics' own
// Prometheus sink would keep memberlist's names (no _total, camelCase,
// milliseconds) and let idle series expire.
type memberlistSeries struct {
	name, help string
	kind       kind
	scale      float64   // multiplies the value (ms to s); 0: 1
	buckets    []float64 // histograms
	label      string    // the one label memberlist adds, if any
}

type kind int

const (
	counter kind = iota
	gauge
	histogram
	ignored // covered by one of dpgate's own series
)

var (
	durationBuckets = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}
	sizeBuckets     = prometheus.ExponentialBuckets(64, 4, 8) // 64 B to 1 MiB
)

// memberlistKeys are the keys memberlist v0.7 emits (state.go, net.go,
// awareness.go, suspicion.go), with our transport (cluster/transport.go)
// in place of its net transport.
var memberlistKeys = map[string]memberlistSeries{
	"memberlist.msg.alive":        {name: "dpgate_memberlist_msg_alive_total", help: "Alive messages memberlist processed (a node joining, or refuting a suspicion of itself)."},
	"memberlist.msg.suspect":      {name: "dpgate_memberlist_msg_suspect_total", help: "Suspect messages memberlist processed (a node failed a probe)."},
	"memberlist.msg.dead":         {name: "dpgate_memberlist_msg_dead_total", help: "Dead messages memberlist processed (a node declared failed)."},
	"memberlist.degraded.probe":   {name: "dpgate_memberlist_degraded_probes_total", help: "Probes that needed more time than the awareness score allows (this node is slow to answer: overloaded or cut off)."},
	"memberlist.degraded.timeout": {name: "dpgate_memberlist_degraded_timeouts_total", help: "Suspicions that timed out without enough independent confirmations."},
	"memberlist.tcp.accept":       {name: "dpgate_memberlist_tcp_accepts_total", help: "Gossip stream connections accepted (push/pull state exchanges, joins)."},
	"memberlist.tcp.connect":      {name: "dpgate_memberlist_tcp_connects_total", help: "Gossip stream connections opened to other nodes."},
	"memberlist.tcp.sent":         {name: "dpgate_memberlist_tcp_sent_bytes_total", help: "Bytes sent over gossip stream connections."},
	"memberlist.udp.sent":         {name: "dpgate_memberlist_udp_sent_bytes_total", help: "Bytes sent in gossip datagrams (probes, gossip)."},
	"memberlist.probeNode":        {name: "dpgate_memberlist_probe_node_duration_seconds", help: "Time of one failure-detection probe round against a node, indirect probes included.", kind: histogram, scale: 1e-3, buckets: durationBuckets},
	"memberlist.gossip":           {name: "dpgate_memberlist_gossip_duration_seconds", help: "Time of one gossip round.", kind: histogram, scale: 1e-3, buckets: durationBuckets},
	"memberlist.pushPullNode":     {name: "dpgate_memberlist_push_pull_node_duration_seconds", help: "Time of one full state exchange (push/pull) with a node.", kind: histogram, scale: 1e-3, buckets: durationBuckets},
	"memberlist.size.local":       {name: "dpgate_memberlist_size_local_bytes", help: "Size of this node's state as last sent in a push/pull exchange.", kind: gauge},
	"memberlist.size.remote":      {name: "dpgate_memberlist_size_remote_bytes", help: "Size of the states received in push/pull exchanges.", kind: histogram, buckets: sizeBuckets},
	"memberlist.queue.broadcasts": {name: "dpgate_memberlist_queue_broadcasts", help: "Broadcasts waiting in the gossip queue, at the last gossip round.", kind: gauge},
	"memberlist.node.instances":   {name: "dpgate_memberlist_node_instances", help: "Nodes memberlist knows, by state (alive, suspect, dead, left).", kind: gauge, label: "node_state"},
	"memberlist.health.score":     {kind: ignored}, // dpgate_cluster_health_score
}

// bridge is a go-metrics sink that feeds memberlistKeys' series; any
// other key is remembered in unmapped and dropped.
type bridge struct {
	counters   map[string]*prometheus.CounterVec
	gauges     map[string]*prometheus.GaugeVec
	histograms map[string]*prometheus.HistogramVec

	mu       sync.Mutex
	unmapped map[string]struct{}
}

func newBridge(reg prometheus.Registerer) *bridge {
	b := &bridge{counters: map[string]*prometheus.CounterVec{}, gauges: map[string]*prometheus.GaugeVec{},
		histograms: map[string]*prometheus.HistogramVec{}, unmapped: map[string]struct{}{}}
	for key, s := range memberlistKeys {
		var labels []string
		if s.label != "" {
			labels = []string{s.label}
		}
		switch s.kind {
		case counter:
			v := prometheus.NewCounterVec(prometheus.CounterOpts{Name: s.name, Help: s.help}, labels)
			b.counters[key] = v
			reg.MustRegister(v)
		case gauge:
			v := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: s.name, Help: s.help}, labels)
			b.gauges[key] = v
			reg.MustRegister(v)
		case histogram:
			v := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: s.name, Help: s.help, Buckets: s.buckets}, labels)
			b.histograms[key] = v
			reg.MustRegister(v)
		}
		if s.label == "" { // present from the start
			switch s.kind {
			case counter:
				b.counters[key].WithLabelValues()
			case gauge:
				b.gauges[key].WithLabelValues()
			case histogram:
				b.histograms[key].WithLabelValues()
			}
		}
	}
	return b
}

// labelValues picks the series' label out of what memberlist sent.
func labelValues(s memberlistSeries, labels []metrics.Label) []string {
	if s.label == "" {
		return nil
	}
	for _, l := range labels {
		if l.Name == s.label {
			return []string{l.Value}
		}
	}
	return []string{""}
}

func (b *bridge) lookup(key []string) (string, memberlistSeries, bool) {
	k := strings.Join(key, ".")
	s, ok := memberlistKeys[k]
	if !ok {
		b.mu.Lock()
		if len(b.unmapped) < 100 {
			b.unmapped[k] = struct{}{}
		}
		b.mu.Unlock()
	}
	return k, s, ok
}

func scaled(s memberlistSeries, v float32) float64 {
	if s.scale != 0 {
		return float64(v) * s.scale
	}
	return float64(v)
}

func (b *bridge) SetGauge(key []string, val float32) { b.SetGaugeWithLabels(key, val, nil) }

func (b *bridge) SetGaugeWithLabels(key []string, val float32, labels []metrics.Label) {
	k, s, ok := b.lookup(key)
	if v := b.gauges[k]; ok && v != nil {
		v.WithLabelValues(labelValues(s, labels)...).Set(scaled(s, val))
	}
}

// EmitKey is go-metrics' key/value event; memberlist sends none.
func (b *bridge) EmitKey(key []string, val float32) { b.lookup(key) }

func (b *bridge) IncrCounter(key []string, val float32) { b.IncrCounterWithLabels(key, val, nil) }

func (b *bridge) IncrCounterWithLabels(key []string, val float32, labels []metrics.Label) {
	k, s, ok := b.lookup(key)
	if v := b.counters[k]; ok && v != nil {
		v.WithLabelValues(labelValues(s, labels)...).Add(scaled(s, val))
	}
}

func (b *bridge) AddSample(key []string, val float32) { b.AddSampleWithLabels(key, val, nil) }

func (b *bridge) AddSampleWithLabels(key []string, val float32, labels []metrics.Label) {
	k, s, ok := b.lookup(key)
	if !ok {
		return
	}
	switch {
	case b.histograms[k] != nil:
		b.histograms[k].WithLabelValues(labelValues(s, labels)...).Observe(scaled(s, val))
	case b.gauges[k] != nil: // a sample kept as its last value
		b.gauges[k].WithLabelValues(labelValues(s, labels)...).Set(scaled(s, val))
	}
}
