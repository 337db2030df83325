// Package telemetry sets up dpgate's metrics: go-metrics (the library
// memberlist also reports through) fanned out to an in-memory sink, read
// by /v1/metrics and dumped on SIGUSR1, and to a Prometheus sink served at
// /metrics. Metric names are dpgate.<component>.<what>; Prometheus shows
// them as dpgate_<component>_<what>.
package telemetry

import (
	"net/http"
	"time"

	metrics "github.com/hashicorp/go-metrics"
	promsink "github.com/hashicorp/go-metrics/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Telemetry is one gateway's metrics.
type Telemetry struct {
	*metrics.Metrics
	Inmem    *metrics.InmemSink
	Registry *prometheus.Registry
}

// New builds the sinks. With global set, the go-metrics package-level
// functions (which memberlist calls) report into them too; only one
// gateway per process should ask for that.
func New(global bool) (*Telemetry, error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	prom, err := promsink.NewPrometheusSinkFrom(promsink.PrometheusOpts{
		Registerer: reg,
		Name:       "dpgate",
		// Gauges nobody updates for this long vanish from /metrics; our
		// gauges are refreshed far more often than this.
		Expiration: 5 * time.Minute,
	})
	if err != nil {
		return nil, err
	}
	inmem := metrics.NewInmemSink(10*time.Second, time.Minute)
	cfg := metrics.DefaultConfig("dpgate")
	cfg.EnableHostname = false
	cfg.EnableRuntimeMetrics = false // the Prometheus Go collector covers it
	sink := metrics.FanoutSink{inmem, prom}
	var m *metrics.Metrics
	if global {
		m, err = metrics.NewGlobal(cfg, sink)
	} else {
		m, err = metrics.New(cfg, sink)
	}
	if err != nil {
		return nil, err
	}
	return &Telemetry{Metrics: m, Inmem: inmem, Registry: reg}, nil
}

// Handler serves the Prometheus exposition format.
func (t *Telemetry) Handler() http.Handler {
	return promhttp.HandlerFor(t.Registry, promhttp.HandlerOpts{})
}
