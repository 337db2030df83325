// Package testutil holds the helpers dpgate's tests share: polling for a
// condition instead of sleeping, loggers, reading a metric, and serving a
// listener for as long as a test runs (serve.go).
package testutil

import (
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// WaitFor polls cond every 10 ms until it returns nil, and fails the test
// with cond's last error once timeout has passed. Tests use it instead of
// sleeping for something to happen (nats-server's checkFor).
func WaitFor(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("gave up after %v: %v", timeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Quiet is a logger that discards everything.
func Quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// Logger is a logger for the code under test: silent while the test
// passes; when it fails, its last lines come with the test's output,
// so a failure seen once in CI comes with what the code logged.
func Logger(t testing.TB, name string) *slog.Logger {
	tb := &tail{max: 300}
	t.Cleanup(func() {
		if t.Failed() {
			tb.mu.Lock()
			defer tb.mu.Unlock()
			t.Logf("%s logged (last %d lines):\n%s", name, len(tb.lines), strings.Join(tb.lines, ""))
		}
	})
	return slog.New(slog.NewTextHandler(tb, nil))
}

// tail keeps the last max lines written to it.
type tail struct {
	mu    sync.Mutex
	max   int
	lines []string
}

func (tb *tail) Write(p []byte) (int, error) {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	if len(tb.lines) == tb.max {
		tb.lines = slices.Delete(tb.lines, 0, 1)
	}
	tb.lines = append(tb.lines, string(p)) // slog writes one record per call
	return len(p), nil
}

// Metric sums the samples of the series name in g (a counter's or
// gauge's value, a histogram's count) whose labels include every
// "label=value" in match.
func Metric(t testing.TB, g prometheus.Gatherer, name string, match ...string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatalf("gathering metrics: %v", err)
	}
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	samples:
		for _, m := range mf.GetMetric() {
			for _, want := range match {
				if !slices.ContainsFunc(m.GetLabel(), func(l *dto.LabelPair) bool { return l.GetName()+"="+l.GetValue() == want }) {
					continue samples
				}
			}
			switch {
			case m.Counter != nil:
				total += m.GetCounter().GetValue()
			case m.Gauge != nil:
				total += m.GetGauge().GetValue()
			case m.Histogram != nil:
				total += float64(m.GetHistogram().GetSampleCount())
			case m.Untyped != nil:
				total += m.GetUntyped().GetValue()
			}
		}
	}
	return total
}
