package series

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestDeclaredAtZero: every combination of the given label values
// exists at 0 before any event, and the series are registered.
func TestDeclaredAtZero(t *testing.T) {
	reg := prometheus.NewRegistry()
	d := On(reg)
	d.Counter("t_plain_total", "A counter.")
	v := d.CounterVec("t_sent_total", "Sent, by via and result.", []string{"via", "result"}, []string{"push", "wol"}, []string{"ok", "error"})
	d.GaugeVec("t_free", "No values: nothing declared.", []string{"link"})
	d.HistogramVec("t_rtt_seconds", "Round trips.", []float64{.1, 1}, []string{"transport"}, []string{"tls", "quic"})
	d.GaugeFunc("t_level", "A level.", func() float64 { return 7 })

	if n := testutil.CollectAndCount(v); n != 4 {
		t.Errorf("t_sent_total has %d series, want the 4 combinations", n)
	}
	want := `
# HELP t_sent_total Sent, by via and result.
# TYPE t_sent_total counter
t_sent_total{result="error",via="push"} 0
t_sent_total{result="error",via="wol"} 0
t_sent_total{result="ok",via="push"} 0
t_sent_total{result="ok",via="wol"} 0
# HELP t_level A level.
# TYPE t_level gauge
t_level 7
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "t_sent_total", "t_level"); err != nil {
		t.Error(err)
	}
	if n, err := testutil.GatherAndCount(reg, "t_free", "t_rtt_seconds", "t_plain_total"); err != nil || n != 3 {
		t.Errorf("gathered %d series of t_free, t_rtt_seconds and t_plain_total (%v), want 0 + 2 + 1", n, err)
	}
}
