// Package series declares Prometheus series in one line each: made,
// registered, and (for vectors) every label value known in advance
// declared at 0, so each series exists from the start (docs/METRICS.md).
// It depends on client_golang alone, so any package may use it.
package series

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Decl declares series on one registry.
type Decl struct {
	reg prometheus.Registerer
	f   promauto.Factory
}

// On declares series on reg.
func On(reg prometheus.Registerer) Decl { return Decl{reg, promauto.With(reg)} }

// Counter declares a counter.
func (d Decl) Counter(name, help string) prometheus.Counter {
	return d.f.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
}

// CounterFunc declares a counter read from value when scraped.
func (d Decl) CounterFunc(name, help string, value func() float64) {
	d.f.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, value)
}

// CounterVec declares a counter with labels; values[i] lists values of
// labels[i], and every combination is declared at 0.
func (d Decl) CounterVec(name, help string, labels []string, values ...[]string) *prometheus.CounterVec {
	v := d.f.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
	declare(func(lv ...string) { v.WithLabelValues(lv...) }, values)
	return v
}

// Gauge declares a gauge.
func (d Decl) Gauge(name, help string) prometheus.Gauge {
	return d.f.NewGauge(prometheus.GaugeOpts{Name: name, Help: help})
}

// GaugeFunc declares a gauge read from value when scraped.
func (d Decl) GaugeFunc(name, help string, value func() float64) {
	d.f.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, value)
}

// GaugeVec declares a gauge with labels, the combinations of values
// declared as in CounterVec.
func (d Decl) GaugeVec(name, help string, labels []string, values ...[]string) *prometheus.GaugeVec {
	v := d.f.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, labels)
	declare(func(lv ...string) { v.WithLabelValues(lv...) }, values)
	return v
}

// Histogram declares a histogram with the given buckets.
func (d Decl) Histogram(name, help string, buckets []float64) prometheus.Histogram {
	return d.f.NewHistogram(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets})
}

// HistogramVec declares a histogram with labels, the combinations of
// values declared as in CounterVec.
func (d Decl) HistogramVec(name, help string, buckets []float64, labels []string, values ...[]string) *prometheus.HistogramVec {
	v := d.f.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets}, labels)
	declare(func(lv ...string) { v.WithLabelValues(lv...) }, values)
	return v
}

// Collector registers a collector of its own (series read when scraped).
func (d Decl) Collector(c prometheus.Collector) { d.reg.MustRegister(c) }

// declare calls with for every combination of values (one list per
// label); nothing when no values are given.
func declare(with func(...string), values [][]string) {
	if len(values) == 0 {
		return
	}
	var walk func(prefix []string, rest [][]string)
	walk = func(prefix []string, rest [][]string) {
		if len(rest) == 0 {
			with(prefix...)
			return
		}
		for _, v := range rest[0] {
			walk(append(prefix[:len(prefix):len(prefix)], v), rest[1:])
		}
	}
	walk(nil, values)
}
