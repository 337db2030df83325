package loadtest

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// A Threshold is a pass/fail condition on one figure of a report, as k6
// writes them: "p99<5ms", "connected>=100%", "lost==0".
type Threshold struct {
	Expr   string
	Figure string
	Op     string
	Value  float64 // in the figure's unit: ms for times, percent, count
}

var thresholdRE = regexp.MustCompile(`^\s*([a-z][a-z0-9_]*)\s*(<=|>=|==|<|>)\s*([0-9.]+)\s*(ms|s|us|%)?\s*$`)

// ParseThreshold reads "FIGURE OP VALUE[UNIT]"; times may be in us, ms or s
// (figures are in ms), percentages with %.
func ParseThreshold(expr string) (Threshold, error) {
	m := thresholdRE.FindStringSubmatch(expr)
	if m == nil {
		return Threshold{}, fmt.Errorf("threshold %q: want FIGURE OP VALUE, e.g. p99<5ms or connected>=100%%", expr)
	}
	v, err := strconv.ParseFloat(m[3], 64)
	if err != nil {
		return Threshold{}, fmt.Errorf("threshold %q: %v", expr, err)
	}
	switch m[4] {
	case "s":
		v *= float64(time.Second / time.Millisecond)
	case "us":
		v /= 1000
	}
	return Threshold{Expr: strings.TrimSpace(expr), Figure: m[1], Op: m[2], Value: v}, nil
}

// Check judges the threshold against figures; an unknown figure is an
// error naming the ones there are.
func (t Threshold) Check(figures map[string]float64) (pass bool, got float64, err error) {
	got, ok := figures[t.Figure]
	if !ok {
		names := make([]string, 0, len(figures))
		for n := range figures {
			names = append(names, n)
		}
		sort.Strings(names)
		return false, 0, fmt.Errorf("threshold %q: no figure %q in this report (there are: %s)", t.Expr, t.Figure, strings.Join(names, ", "))
	}
	switch t.Op {
	case "<":
		pass = got < t.Value
	case "<=":
		pass = got <= t.Value
	case ">":
		pass = got > t.Value
	case ">=":
		pass = got >= t.Value
	case "==":
		pass = got == t.Value
	}
	return pass, got, nil
}

// Figures are the connect report's figures for thresholds: connected (%
// of the agents), held (% after the hold), rate (connects/s), p50, p99,
// max (connect time, ms), failed (attempts).
func (r ConnectReport) Figures() map[string]float64 {
	f := map[string]float64{"rate": r.Rate, "p50": r.HandshakeP50, "p99": r.HandshakeP99, "max": r.HandshakeMax}
	if r.Agents > 0 {
		f["connected"] = 100 * float64(r.Connected) / float64(r.Agents)
		f["held"] = 100 * float64(r.HeldAfterHold) / float64(r.Agents)
	}
	var failed int64
	for _, n := range r.Failures {
		failed += n
	}
	f["failed"] = float64(failed)
	return f
}

// Figures are the push report's figures for thresholds: connect_s, p50,
// p99, p999, max (publish to receive, ms), received (% of published),
// broadcast_last (ms), broadcast_received (% of agents), storm_s, lost,
// rss_per_conn (KiB).
func (r PushReport) Figures() map[string]float64 {
	f := map[string]float64{"connect_s": r.ConnectSeconds}
	if r.PerConnBytes > 0 {
		f["rss_per_conn"] = r.PerConnBytes / 1024
	}
	if l := r.Latency; l != nil {
		f["p50"], f["p99"], f["p999"], f["max"] = l.P50ms, l.P99ms, l.P999ms, l.MaxMs
		if l.Published > 0 {
			f["received"] = 100 * float64(l.Received) / float64(l.Published)
		}
	}
	if b := r.Broadcast; b != nil {
		f["broadcast_last"] = b.LastMs
		if b.Devices > 0 {
			f["broadcast_received"] = 100 * float64(b.Received) / float64(b.Devices)
		}
	}
	if s := r.Storm; s != nil {
		f["storm_s"], f["lost"] = s.BackSeconds, float64(s.Lost)
	}
	return f
}
