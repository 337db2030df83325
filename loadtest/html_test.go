package loadtest

import (
	"bytes"
	"slices"
	"strings"
	"testing"
)

// TestAxisTicks: axes end on a round value at or above the data and are
// marked at round steps (1, 2 or 5 times a power of ten), labelled
// without noise digits.
func TestAxisTicks(t *testing.T) {
	for _, c := range []struct {
		top    float64
		n      int
		last   float64
		labels []string
	}{
		{97, 5, 100, []string{"0", "20", "40", "60", "80", "100"}},
		{15000, 5, 15000, []string{"0", "5000", "10000", "15000"}},
		{0.37, 4, 0.4, []string{"0.0", "0.1", "0.2", "0.3", "0.4"}},
		{2.6, 8, 3, []string{"0.0", "0.5", "1.0", "1.5", "2.0", "2.5", "3.0"}},
		{0, 5, 1, []string{"0.0", "0.2", "0.4", "0.6", "0.8", "1.0"}},
	} {
		last, ticks := axisTicks(c.top, c.n, 100)
		var labels []string
		for _, tk := range ticks {
			labels = append(labels, tk.Label)
		}
		if last != c.last || !slices.Equal(labels, c.labels) {
			t.Errorf("axisTicks(%v, %d) = %v %v, want %v %v", c.top, c.n, last, labels, c.last, c.labels)
		}
		if ticks[0].Pos != 0 || ticks[len(ticks)-1].Pos != 100 {
			t.Errorf("axisTicks(%v): marks from %v to %v, want the axis' ends 0 and 100", c.top, ticks[0].Pos, ticks[len(ticks)-1].Pos)
		}
	}
}

// TestHTMLReportMarksAxesAndVerdicts: the charts carry tick labels and
// grid lines, and each judged figure says pass or FAIL.
func TestHTMLReportMarksAxesAndVerdicts(t *testing.T) {
	r := HTMLReport{Title: "t", Rows: []Row{
		judged("p99", "7 ms", "<= 5 ms", false),
		judged("lost", "0", "lost = 0", true),
		row("rate", "10/s", "-"),
	}, Lines: []Line{{Title: "connected", YLabel: "agents", Points: []XY{{0, 0}, {4.2, 130}, {9.7, 300}}}},
		Histograms: []Histogram{{"latency", []Bar{{0, 0.5, 10}, {0.5, 1, 3}}}}}
	var b bytes.Buffer
	if err := WriteHTML(&b, r); err != nil {
		t.Fatal(err)
	}
	html := b.String()
	for _, want := range []string{`>FAIL</td>`, `>pass</td>`, `>300</text>`, `>200</text>`, `>10</text>`, `>0.2</text>`, `stroke="#e4e4e4"`} {
		if !strings.Contains(html, want) {
			t.Errorf("HTML report lacks %s", want)
		}
	}
}
