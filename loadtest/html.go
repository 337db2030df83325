package loadtest

import (
	"fmt"
	"html/template"
	"io"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// An HTML report is one self-contained file: the figures table (each next
// to its limit) and SVG charts drawn here, no script and nothing fetched,
// so it opens anywhere and prints as it looks.

// Bar is one histogram bucket.
type Bar struct {
	FromMs, ToMs float64
	Count        int64
}

// Bars turns a latency histogram (microseconds) into at most n buckets of
// equal width up to its 99.9th percentile (the rest go in the last one).
func Bars(h *hdrhistogram.Histogram, n int) []Bar {
	if h == nil || h.TotalCount() == 0 {
		return nil
	}
	top := float64(h.ValueAtQuantile(99.9)) / 1000
	width := max(top/float64(n), 0.001)
	bars := make([]Bar, n)
	for i := range bars {
		bars[i].FromMs, bars[i].ToMs = float64(i)*width, float64(i+1)*width
	}
	for _, b := range h.Distribution() {
		if b.Count == 0 {
			continue
		}
		i := min(n-1, int(float64(b.From)/1000/width))
		bars[i].Count += b.Count
	}
	return bars
}

// Progress reports a long run as it goes: Note for each step, Count for
// a counter (a bar on a terminal). Nil functions discard.
type Progress struct {
	Note  func(format string, args ...any)
	Count func(what string, done, total int64)
}

func (p Progress) note(format string, args ...any) {
	if p.Note != nil {
		p.Note(format, args...)
	}
}

func (p Progress) count(what string, done, total int64) {
	if p.Count != nil {
		p.Count(what, done, total)
	}
}

// Row is one figure of the report: what was measured, the limit or
// target it stands against, and the verdict: pass, FAIL, or "" where the
// limit is a reference, not a judgement.
type Row struct{ Figure, Measured, Limit, Verdict string }

// row is a figure with a reference beside it and no verdict.
func row(figure, measured, limit string) Row { return Row{figure, measured, limit, ""} }

// judged is a figure judged against its limit.
func judged(figure, measured, limit string, pass bool) Row {
	r := row(figure, measured, limit)
	r.Verdict = "FAIL"
	if pass {
		r.Verdict = "pass"
	}
	return r
}

// HTMLReport is what WriteHTML draws: the figures, then each line chart,
// then each histogram.
type HTMLReport struct {
	Title      string
	Command    string
	When       time.Time
	Rows       []Row
	Lines      []Line
	Histograms []Histogram
}

// Line is a figure over the time of the run.
type Line struct {
	Title  string
	YLabel string
	Points []XY // X: seconds since the start
}

// XY is one point of a Line.
type XY struct{ X, Y float64 }

// Histogram is one latency distribution.
type Histogram struct {
	Title string
	Bars  []Bar
}

// connectionsLine charts agents connected over time.
func connectionsLine(ps []TimePoint) []Line {
	if len(ps) == 0 {
		return nil
	}
	l := Line{Title: "Connections over time", YLabel: "connected"}
	for _, p := range ps {
		l.Points = append(l.Points, XY{p.Seconds, float64(p.Connected)})
	}
	return []Line{l}
}

const chartW, chartH = 640.0, 220.0

type svgChart struct {
	Title  string
	Points string // polyline points, or empty
	Bars   []svgBar
	XLabel string
	YLabel string
	// XTicks and YTicks are the axes' marks: round values (1, 2 or 5
	// times a power of ten apart), each with a grid line.
	XTicks, YTicks []svgTick
}

type svgBar struct{ X, Y, W, H float64 }

// svgTick is one axis mark: its position along the axis, in pixels, and
// its label.
type svgTick struct {
	Pos   float64
	Label string
}

// axisTicks are about n round steps from 0 up to at least top: the top
// of the axis (the last tick) and the marks.
func axisTicks(top float64, n int, length float64) (float64, []svgTick) {
	if top <= 0 || math.IsNaN(top) || math.IsInf(top, 0) {
		top = 1
	}
	raw := top / float64(n)
	pow := math.Pow(10, math.Floor(math.Log10(raw)))
	step := pow
	for _, m := range []float64{1, 2, 5, 10} {
		if step = m * pow; step >= raw {
			break
		}
	}
	last := math.Ceil(top/step-1e-9) * step
	decimals := max(0, int(-math.Floor(math.Log10(step)+1e-9)))
	var ticks []svgTick
	for i := 0; float64(i)*step <= last*(1+1e-9); i++ {
		v := float64(i) * step
		ticks = append(ticks, svgTick{Pos: v / last * length, Label: strconv.FormatFloat(v, 'f', decimals, 64)})
	}
	return last, ticks
}

func lineChart(l Line) *svgChart {
	if len(l.Points) == 0 {
		return nil
	}
	xmax, ymax := l.Points[len(l.Points)-1].X, 0.0
	for _, p := range l.Points {
		ymax = max(ymax, p.Y)
	}
	c := &svgChart{Title: l.Title, XLabel: "seconds", YLabel: l.YLabel}
	xtop, xt := axisTicks(xmax, 8, chartW)
	ytop, yt := axisTicks(ymax, 5, chartH)
	c.XTicks, c.YTicks = xt, flip(yt)
	var b strings.Builder
	for _, p := range l.Points {
		fmt.Fprintf(&b, "%.1f,%.1f ", p.X/xtop*chartW, chartH-p.Y/ytop*chartH)
	}
	c.Points = b.String()
	return c
}

// flip turns vertical marks (distance from the bottom) into SVG y
// positions (from the top).
func flip(ticks []svgTick) []svgTick {
	for i := range ticks {
		ticks[i].Pos = chartH - ticks[i].Pos
	}
	return ticks
}

func barChart(title string, bars []Bar) *svgChart {
	if len(bars) == 0 {
		return nil
	}
	var top int64 = 1
	for _, b := range bars {
		top = max(top, b.Count)
	}
	c := &svgChart{Title: title, XLabel: "milliseconds", YLabel: "count"}
	xtop, xt := axisTicks(bars[len(bars)-1].ToMs, 8, chartW)
	ytop, yt := axisTicks(float64(top), 5, chartH)
	c.XTicks, c.YTicks = xt, flip(yt)
	for _, b := range bars {
		h := float64(b.Count) / ytop * chartH
		x, w := b.FromMs/xtop*chartW, (b.ToMs-b.FromMs)/xtop*chartW
		c.Bars = append(c.Bars, svgBar{X: x, Y: chartH - h, W: max(w-1, 1), H: h})
	}
	return c
}

var htmlTmpl = template.Must(template.New("report").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{.R.Title}}</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{padding:.3em .8em;border-bottom:1px solid #ddd;text-align:left}
td.m{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:1.5em 0}figcaption{font-weight:600;margin-bottom:.3em}
svg{background:#fafafa;border:1px solid #ddd}
code{background:#f3f3f3;padding:.1em .3em}
td.pass{color:#1a7f37;font-weight:600}td.FAIL{color:#cf222e;font-weight:600}
</style></head><body>
<h1>{{.R.Title}}</h1>
<p>{{.R.When.Format "2006-01-02 15:04:05 MST"}} &middot; <code>{{.R.Command}}</code></p>
<table><tr><th>figure</th><th>measured</th><th>limit</th><th>verdict</th></tr>
{{range .R.Rows}}<tr><td>{{.Figure}}</td><td class="m">{{.Measured}}</td><td>{{.Limit}}</td><td class="{{.Verdict}}">{{.Verdict}}</td></tr>
{{end}}</table>
{{range .Charts}}{{if .}}<figure><figcaption>{{.Title}}</figcaption>
<svg xmlns="http://www.w3.org/2000/svg" width="720" height="265" viewBox="-62 -10 732 265" role="img" aria-label="{{.Title}}">
{{range .YTicks}}<line x1="0" y1="{{.Pos}}" x2="640" y2="{{.Pos}}" stroke="#e4e4e4"/><text x="-6" y="{{.Pos}}" dy="4" text-anchor="end" font-size="11">{{.Label}}</text>{{end}}
{{range .XTicks}}<line x1="{{.Pos}}" y1="0" x2="{{.Pos}}" y2="220" stroke="#eeeeee"/><line x1="{{.Pos}}" y1="220" x2="{{.Pos}}" y2="225" stroke="#888"/><text x="{{.Pos}}" y="237" text-anchor="middle" font-size="11">{{.Label}}</text>{{end}}
<line x1="0" y1="220" x2="640" y2="220" stroke="#888"/><line x1="0" y1="0" x2="0" y2="220" stroke="#888"/>
{{if .Points}}<polyline fill="none" stroke="#1f6feb" stroke-width="2" points="{{.Points}}"/>{{end}}
{{range .Bars}}<rect x="{{.X}}" y="{{.Y}}" width="{{.W}}" height="{{.H}}" fill="#1f6feb"/>{{end}}
<text x="320" y="252" text-anchor="middle" font-size="12">{{.XLabel}}</text>
<text x="-50" y="110" font-size="12" transform="rotate(-90 -50 110)" text-anchor="middle">{{.YLabel}}</text>
</svg></figure>{{end}}{{end}}
</body></html>
`))

// WriteHTML writes the report as one self-contained HTML file.
func WriteHTML(w io.Writer, r HTMLReport) error {
	var charts []*svgChart
	for _, l := range r.Lines {
		charts = append(charts, lineChart(l))
	}
	for _, h := range r.Histograms {
		charts = append(charts, barChart(h.Title, h.Bars))
	}
	return htmlTmpl.Execute(w, map[string]any{"R": r, "Charts": charts})
}
