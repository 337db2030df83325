package loadtest

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// ProxyReport is everything one dpload proxy run measured, per target.
type ProxyReport struct {
	Duration   string                        `json:"duration"`
	Throughput map[string][]ThroughputResult `json:"throughput,omitempty"`
	Latency    map[string]LatencyResult      `json:"latency,omitempty"`
	Connect    map[string]ConnectResult      `json:"connect,omitempty"`
	Idle       map[string]IdleResult         `json:"idle,omitempty"`
	Targets    []string                      `json:"targets"`
}

// Limits the proxy figures stand against (see docs/BENCHMARKS.md).
const SensorIngressGbps = 1.0 // a Sensor relays at most 1 Gbit/s

// WriteTable prints the report with targets side by side.
func (r ProxyReport) WriteTable(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	row := func(cells ...any) {
		for _, c := range cells {
			fmt.Fprintf(tw, "%v\t", c)
		}
		fmt.Fprintln(tw)
	}
	header := append([]any{"figure"}, anys(r.Targets)...)
	row(append(header, "limit")...)
	if len(r.Throughput) > 0 {
		for i, tr := range r.Throughput[r.Targets[0]] {
			cells := []any{fmt.Sprintf("throughput %d stream(s), Gbit/s", tr.Streams)}
			for _, t := range r.Targets {
				if i < len(r.Throughput[t]) {
					x := r.Throughput[t][i]
					cells = append(cells, fmt.Sprintf("%.2f", x.Gbps))
				}
			}
			row(append(cells, fmt.Sprintf("Sensor %.0f", SensorIngressGbps))...)
			cells = []any{fmt.Sprintf("proxy CPU s per GiB, %d stream(s)", tr.Streams)}
			for _, t := range r.Targets {
				if i < len(r.Throughput[t]) && r.Throughput[t][i].CPUPerGiB > 0 {
					cells = append(cells, fmt.Sprintf("%.3f", r.Throughput[t][i].CPUPerGiB))
				} else {
					cells = append(cells, "-")
				}
			}
			row(append(cells, "-")...)
		}
	}
	if len(r.Latency) > 0 {
		for _, q := range []string{"p50", "p99"} {
			cells := []any{fmt.Sprintf("latency %s, us (%d conns)", q, r.Latency[r.Targets[0]].Conns)}
			for _, t := range r.Targets {
				l := r.Latency[t]
				v := l.P50us
				if q == "p99" {
					v = l.P99us
				}
				cells = append(cells, fmt.Sprintf("%.0f", v))
			}
			row(append(cells, "-")...)
		}
	}
	if len(r.Connect) > 0 {
		cells := []any{"new TLS connections/s"}
		for _, t := range r.Targets {
			cells = append(cells, fmt.Sprintf("%.0f", r.Connect[t].PerSec))
		}
		row(append(cells, "-")...)
		cells = []any{"connection failures"}
		for _, t := range r.Targets {
			cells = append(cells, r.Connect[t].Failed)
		}
		row(append(cells, "-")...)
	}
	if len(r.Idle) > 0 {
		cells := []any{"RSS per idle relayed connection, KiB"}
		for _, t := range r.Targets {
			if x, ok := r.Idle[t]; ok {
				cells = append(cells, fmt.Sprintf("%.1f", x.PerConnBytes/1024))
			} else {
				cells = append(cells, "-")
			}
		}
		row(append(cells, "-")...)
	}
	tw.Flush()
}

// Rows are the proxy report's figures, a row per figure and target.
func (r ProxyReport) Rows() []Row {
	var rows []Row
	for _, t := range r.Targets {
		for _, x := range r.Throughput[t] {
			rows = append(rows, judged(fmt.Sprintf("%s: throughput, %d stream(s)", t, x.Streams), fmt.Sprintf("%.2f Gbit/s", x.Gbps), fmt.Sprintf(">= %.0f Gbit/s (a Sensor)", SensorIngressGbps), x.Gbps >= SensorIngressGbps))
			if x.CPUPerGiB > 0 {
				rows = append(rows, row(fmt.Sprintf("%s: proxy CPU per GiB, %d stream(s)", t, x.Streams), fmt.Sprintf("%.3f s", x.CPUPerGiB), "-"))
			}
		}
	}
	for _, t := range r.Targets {
		if l, ok := r.Latency[t]; ok {
			rows = append(rows, row(fmt.Sprintf("%s: request/response p50 / p99 (%d conns, %d B)", t, l.Conns, l.Size), fmt.Sprintf("%.0f / %.0f us", l.P50us, l.P99us), "-"))
		}
	}
	for _, t := range r.Targets {
		if c, ok := r.Connect[t]; ok {
			rows = append(rows, judged(t+": new TLS connections/s (failures)", fmt.Sprintf("%.0f (%d)", c.PerSec, c.Failed), "no failures", c.Failed == 0))
		}
	}
	for _, t := range r.Targets {
		if x, ok := r.Idle[t]; ok {
			rows = append(rows, row(t+": RSS per idle relayed connection", fmt.Sprintf("%.1f KiB", x.PerConnBytes/1024), "-"))
		}
	}
	return rows
}

// HTML is the proxy report for WriteHTML: the figures and each target's
// request/response latency histogram.
func (r ProxyReport) HTML(command string) HTMLReport {
	h := HTMLReport{Title: "dpload proxy: " + strings.Join(r.Targets, ", "), Command: command, When: time.Now(), Rows: r.Rows()}
	for _, t := range r.Targets {
		if l, ok := r.Latency[t]; ok {
			h.Histograms = append(h.Histograms, Histogram{fmt.Sprintf("%s: request/response latency (%d B)", t, l.Size), l.Bars})
		}
	}
	return h
}

func anys(s []string) []any {
	out := make([]any, len(s))
	for i, v := range s {
		out[i] = v
	}
	return out
}

// Rows are the push report's figures next to the limits they are judged by.
func (r PushReport) Rows() []Row {
	var rows []Row
	if r.Interrupted {
		rows = append(rows, row("INTERRUPTED", "the scenarios finished before Ctrl-C", ""))
	}
	rows = append(rows, row(fmt.Sprintf("agents connected (%s, %d processes)", r.Transport, r.Procs), fmt.Sprintf("%d in %.1f s", r.Agents, r.ConnectSeconds), "management server 300; DP push server 50,000"))
	if r.PerConnBytes > 0 {
		rows = append(rows, judged("server RSS per connection", fmt.Sprintf("%.1f KiB", r.PerConnBytes/1024), "<= 8 KiB", r.PerConnBytes <= 8<<10))
	}
	if l := r.Latency; l != nil {
		rows = append(rows,
			judged(fmt.Sprintf("publish->receive at %.0f/s: p50 / p99 / max", l.Rate), fmt.Sprintf("%.2f / %.2f / %.1f ms", l.P50ms, l.P99ms, l.MaxMs), "p99 <= 5 ms", l.P99ms <= 5),
			judged("  published / received / refused", fmt.Sprintf("%d / %d / %d", l.Published, l.Received, l.Failed), "all received", l.Received >= l.Published && l.Failed == 0))
	}
	if b := r.Broadcast; b != nil {
		rows = append(rows, judged(fmt.Sprintf("broadcast to %d: p50 / last", b.Devices), fmt.Sprintf("%.1f / %.1f ms (%d received)", b.P50ms, b.LastMs, b.Received), "last <= 300 ms, all received", b.LastMs <= 300 && b.Received >= int64(b.Devices)))
	}
	if s := r.Storm; s != nil {
		rows = append(rows, row("reconnect storm: all back after", fmt.Sprintf("%.1f s", s.BackSeconds), "-"))
		if s.PeakRSS > 0 {
			rows = append(rows, row("  server peak RSS", fmt.Sprintf("%.0f MiB", float64(s.PeakRSS)/(1<<20)), "-"))
		}
		rows = append(rows, judged("  pushes published / received / lost", fmt.Sprintf("%d / %d / %d", s.Published, s.Received, s.Lost), "lost = 0", s.Lost == 0))
	}
	return rows
}

// WriteTable prints the push report next to the limits it is judged by.
func (r PushReport) WriteTable(w io.Writer) { writeRows(w, r.Rows()) }

// writeRows prints figures in columns: figure, measured, the limit it is
// judged by, and pass or FAIL where the limit is a judgement.
func writeRows(w io.Writer, rows []Row) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "figure\tmeasured\tlimit / target\tverdict\n")
	for _, row := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", row.Figure, row.Measured, row.Limit, row.Verdict)
	}
	tw.Flush()
}

// HTML is the push report for WriteHTML.
func (r PushReport) HTML(command string) HTMLReport {
	return HTMLReport{Title: fmt.Sprintf("dpload push: %d agents (%s)", r.Agents, r.Transport), Command: command, When: time.Now(),
		Rows: r.Rows(), Lines: connectionsLine(r.Timeline), Histograms: []Histogram{{"Publish -> receive latency", r.LatencyBars}}}
}
