// Package telemetry holds one gateway's metrics: a Prometheus registry
// that every part registers its series in at start (so each exists, at 0,
// before its first event, and never expires), the Go and process
// collectors, dpgate_build_info, and a bridge that turns memberlist's
// go-metrics calls into declared Prometheus series named by Prometheus
// conventions. docs/METRICS.md lists every series.
package telemetry

import (
	"io"
	"net/http"
	"sort"
	"strings"

	metrics "github.com/hashicorp/go-metrics"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/expfmt"
)

// Telemetry is one gateway's metrics.
type Telemetry struct {
	// Registry is where the parts register their series.
	Registry *prometheus.Registry
	bridge   *bridge
}

// Build names the running build in dpgate_build_info.
type Build struct {
	Version, Commit, GoVersion string
}

// New builds the registry. With global set, the go-metrics package-level
// functions (which memberlist calls) report into it too, through the
// bridge; only one gateway per process should ask for that.
func New(global bool, b Build) (*Telemetry, error) {
	reg := prometheus.NewRegistry()
	info := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "dpgate_build_info",
		Help:        "Always 1; the labels name the running build (version and commit set at release build time, Go version).",
		ConstLabels: prometheus.Labels{"version": b.Version, "commit": b.Commit, "goversion": b.GoVersion},
	})
	info.Set(1)
	reg.MustRegister(info, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	t := &Telemetry{Registry: reg}
	if global {
		t.bridge = newBridge(reg)
		cfg := metrics.DefaultConfig("") // memberlist's keys as they are
		cfg.EnableHostname = false
		cfg.EnableRuntimeMetrics = false // the Go collector covers it
		if _, err := metrics.NewGlobal(cfg, t.bridge); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// Handler serves the Prometheus exposition format.
func (t *Telemetry) Handler() http.Handler {
	return promhttp.HandlerFor(t.Registry, promhttp.HandlerOpts{})
}

// WriteText writes every series in the Prometheus text format (the
// SIGUSR1 dump).
func (t *Telemetry) WriteText(w io.Writer) error {
	mfs, err := t.Registry.Gather()
	if err != nil {
		return err
	}
	enc := expfmt.NewEncoder(w, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
			return err
		}
	}
	return nil
}

// Sample is one series' value in Snapshot: a counter's or gauge's value,
// a histogram's count and sum.
type Sample struct {
	Labels map[string]string `json:"labels,omitempty"`
	Value  float64           `json:"value"`
	Count  uint64            `json:"count,omitempty"`
	Sum    float64           `json:"sum,omitempty"`
}

// Family is one metric in Snapshot.
type Family struct {
	Name    string   `json:"name"`
	Type    string   `json:"type"`
	Help    string   `json:"help"`
	Samples []Sample `json:"samples"`
}

// Snapshot is every series now, for GET /v1/metrics (JSON).
func (t *Telemetry) Snapshot() ([]Family, error) {
	mfs, err := t.Registry.Gather()
	out := make([]Family, 0, len(mfs))
	for _, mf := range mfs {
		f := Family{Name: mf.GetName(), Type: strings.ToLower(mf.GetType().String()), Help: mf.GetHelp()}
		for _, m := range mf.GetMetric() {
			s := Sample{}
			if len(m.GetLabel()) > 0 {
				s.Labels = map[string]string{}
				for _, l := range m.GetLabel() {
					s.Labels[l.GetName()] = l.GetValue()
				}
			}
			switch {
			case m.Counter != nil:
				s.Value = m.GetCounter().GetValue()
			case m.Gauge != nil:
				s.Value = m.GetGauge().GetValue()
			case m.Histogram != nil:
				s.Count, s.Sum = m.GetHistogram().GetSampleCount(), m.GetHistogram().GetSampleSum()
			case m.Summary != nil:
				s.Count, s.Sum = m.GetSummary().GetSampleCount(), m.GetSummary().GetSampleSum()
			case m.Untyped != nil:
				s.Value = m.GetUntyped().GetValue()
			}
			f.Samples = append(f.Samples, s)
		}
		out = append(out, f)
	}
	return out, err
}

// Unmapped lists the go-metrics keys the bridge received but has no
// series for (a memberlist upgrade that added metrics): they are dropped.
func (t *Telemetry) Unmapped() []string {
	if t.bridge == nil {
		return nil
	}
	t.bridge.mu.Lock()
	defer t.bridge.mu.Unlock()
	out := make([]string, 0, len(t.bridge.unmapped))
	for k := range t.bridge.unmapped {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
