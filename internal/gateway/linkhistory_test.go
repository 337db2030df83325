package gateway

import (
	"strings"
	"testing"
	"time"

	"github.com/dpgate/dpgate/link"
)

// TestLinkHistoryChart: an hour of points is kept per link, older ones
// dropped; the chart draws them against the limit.
func TestLinkHistoryChart(t *testing.T) {
	t.Parallel()
	var h linkHistory
	start := time.Date(2026, 12, 6, 8, 0, 0, 0, time.UTC)
	for i := range 150 { // 75 minutes, a point every 30 s
		loss := 0.02
		if i > 140 {
			loss = 0.2 // out of limits at the end
		}
		h.record(start.Add(time.Duration(i)*linkSampleEvery), []link.Status{
			{Name: "central:443", Stats: link.Stats{Sent: 300, LossOut: loss, RTTP50: 40 * time.Millisecond}},
			{Name: "not-yet:443"}, // nothing judged yet: no point
		})
	}
	ps := h.get("central:443")
	if len(ps) != 121 || len(h.get("not-yet:443")) != 0 {
		t.Fatalf("kept %d points (and %d for a link with no figures), want 121 (an hour at 30 s, both ends) and 0", len(ps), len(h.get("not-yet:443")))
	}
	if last := ps[len(ps)-1]; last.Loss != 20 || last.RTT != 40*time.Millisecond {
		t.Errorf("last point %+v, want 20 %% and 40ms", last)
	}
	at, loss := make([]time.Time, len(ps)), make([]float64, len(ps))
	for i, p := range ps {
		at[i], loss[i] = p.At, p.Loss
	}
	svg := string(chart(ps[len(ps)-1].At, at, loss, 10, " %"))
	if n := strings.Count(strings.Split(svg, `points="`)[1], ","); n != len(ps) {
		t.Errorf("the polyline has %d points, want %d", n, len(ps))
	}
	for _, want := range []string{`class="limit"`, "10 %", "-60 min", "now"} {
		if !strings.Contains(svg, want) {
			t.Errorf("the chart lacks %q", want)
		}
	}
	if empty := string(chart(time.Now(), nil, nil, 100, " ms")); !strings.Contains(empty, "no figures yet") {
		t.Error("an empty chart does not say so")
	}
}
