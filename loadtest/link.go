package loadtest

import (
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"github.com/dpgate/dpgate/link"
)

// LinkReport is one dpload link run: the figures over the whole run, the
// verdict against the uplink limits, and the run in slices for charts.
type LinkReport struct {
	Target     string      `json:"target"`
	Impairment Impairment  `json:"impairment_each_way"`
	Stats      link.Stats  `json:"stats"`
	Verdict    link.State  `json:"verdict"`
	Series     []LinkPoint `json:"series,omitempty"`
	RTTBars    []Bar       `json:"rtt_histogram,omitempty"`
}

// LinkPoint is one slice of a run (at most 60 slices, at least 100 ms
// each): probes sent in it, loss and median round trip of those.
type LinkPoint struct {
	Seconds  float64 `json:"seconds"` // the slice's start, since the first probe
	Sent     int     `json:"sent"`
	Answered int     `json:"answered"`
	Loss     float64 `json:"loss"`
	RTTP50Ms float64 `json:"rtt_p50_ms"`
}

// NewLinkReport builds the report from a finished prober's statistics and
// samples.
func NewLinkReport(target string, imp Impairment, st link.Stats, verdict link.State, samples []link.ProbeSample) LinkReport {
	r := LinkReport{Target: target, Impairment: imp, Stats: st, Verdict: verdict}
	if len(samples) == 0 {
		return r
	}
	start := samples[0].Sent
	span := samples[len(samples)-1].Sent.Sub(start)
	width := max(100*time.Millisecond, span/60)
	hist := hdrhistogram.New(1, 60_000_000, 3) // 1 us .. 60 s
	var rtts []time.Duration
	flush := func(p *LinkPoint) {
		if p.Sent == 0 {
			return
		}
		p.Loss = 1 - float64(p.Answered)/float64(p.Sent)
		if len(rtts) > 0 {
			slices.Sort(rtts)
			p.RTTP50Ms = float64(rtts[len(rtts)/2].Microseconds()) / 1000
		}
		r.Series = append(r.Series, *p)
		rtts = rtts[:0]
	}
	cur, curSlice := LinkPoint{}, time.Duration(-1)
	for _, s := range samples {
		if slice := s.Sent.Sub(start) / width; slice != curSlice {
			flush(&cur)
			cur, curSlice = LinkPoint{Seconds: (slice * width).Seconds()}, slice
		}
		cur.Sent++
		if s.Answered {
			cur.Answered++
			rtts = append(rtts, s.RTT)
			hist.RecordValue(max(1, s.RTT.Microseconds()))
		}
	}
	flush(&cur)
	r.RTTBars = Bars(hist, 40)
	return r
}

// Rows are the link figures next to the uplink limits.
func (r LinkReport) Rows() []Row {
	st, ms := r.Stats, func(d time.Duration) float64 { return d.Seconds() * 1000 }
	lossLimit := fmt.Sprintf("%.0f%% (uplink)", 100*LimitUplinkLoss)
	return []Row{
		row("probes sent / answered", fmt.Sprintf("%d / %d", st.Sent, st.Received), "-"),
		judged("loss towards the reflector", fmt.Sprintf("%.2f%%", 100*st.LossOut), lossLimit, st.LossOut <= LimitUplinkLoss),
		judged("loss on the way back", fmt.Sprintf("%.2f%%", 100*st.LossBack), lossLimit, st.LossBack <= LimitUplinkLoss),
		judged("round-trip time p50", fmt.Sprintf("%.2f ms", ms(st.RTTP50)), fmt.Sprintf("%.0f ms (uplink delay)", LimitUplinkDelayMs), ms(st.RTTP50) <= LimitUplinkDelayMs),
		row("round-trip time p99 / max", fmt.Sprintf("%.1f / %.1f ms", ms(st.RTTP99), ms(st.RTTMax)), "-"),
		row("jitter (RFC 3550)", fmt.Sprintf("%.2f ms", ms(st.Jitter)), "-"),
		row("duplicates / reordered", fmt.Sprintf("%d / %d", st.Duplicates, st.Reordered), "-"),
		judged("verdict", string(r.Verdict), "ok", r.Verdict == "ok"),
	}
}

// WriteTable prints the figures next to the limits.
func (r LinkReport) WriteTable(w io.Writer) { writeRows(w, r.Rows()) }

// HTML is the link report for WriteHTML: loss and median RTT over the
// run, and the distribution of round-trip times.
func (r LinkReport) HTML(command string) HTMLReport {
	loss := Line{Title: "Round-trip loss over the run", YLabel: "loss, %"}
	rtt := Line{Title: "Median round-trip time over the run", YLabel: "ms"}
	for _, p := range r.Series {
		loss.Points = append(loss.Points, XY{p.Seconds, 100 * p.Loss})
		rtt.Points = append(rtt.Points, XY{p.Seconds, p.RTTP50Ms})
	}
	title := "dpload link: " + r.Target
	if r.Impairment != (Impairment{}) {
		title += " through the impairment relay"
	}
	return HTMLReport{Title: title, Command: command, When: time.Now(), Rows: r.Rows(),
		Lines: []Line{loss, rtt}, Histograms: []Histogram{{"Round-trip times", r.RTTBars}}}
}
