package gateway

import (
	"fmt"
	"html/template"
	"strings"
	"sync"
	"time"

	"github.com/dpgate/dpgate/link"
)

// The last hour of each measured uplink, for the console's charts: a
// point every linkSampleEvery (loss, the worse direction, and the median
// RTT of the window at that moment).
const (
	linkSampleEvery = 30 * time.Second
	linkHistorySpan = time.Hour
)

type linkPoint struct {
	At   time.Time
	Loss float64 // percent
	RTT  time.Duration
}

type linkHistory struct {
	mu     sync.Mutex
	points map[string][]linkPoint // by link name, oldest first
}

// record adds the links' current figures at now and drops what is older
// than the span.
func (h *linkHistory) record(now time.Time, links []link.Status) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.points == nil {
		h.points = map[string][]linkPoint{}
	}
	for _, l := range links {
		if l.Stats.Sent == 0 {
			continue // nothing judged yet
		}
		ps := append(h.points[l.Name], linkPoint{At: now, Loss: 100 * max(l.Stats.LossOut, l.Stats.LossBack), RTT: l.Stats.RTTP50})
		for len(ps) > 0 && now.Sub(ps[0].At) > linkHistorySpan {
			ps = ps[1:]
		}
		h.points[l.Name] = ps
	}
}

func (h *linkHistory) get(name string) []linkPoint {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]linkPoint(nil), h.points[name]...)
}

// chart is an SVG line chart of values over the last hour ending at now,
// with the limit as a dashed line; the scale reaches at least 1.5 times
// the limit. Everything in it is numbers this package formats, so it is
// safe to put in the page as it is.
func chart(now time.Time, at []time.Time, values []float64, limit float64, unit string) template.HTML {
	const w, h, pad = 600.0, 160.0, 28.0
	top := 1.5 * limit
	for _, v := range values {
		top = max(top, v*1.1)
	}
	x := func(t time.Time) float64 {
		return pad + (w-pad)*(1-float64(now.Sub(t))/float64(linkHistorySpan))
	}
	y := func(v float64) float64 { return h - pad - (h-2*pad)*v/top }
	var b strings.Builder
	fmt.Fprintf(&b, `<svg viewBox="0 0 %.0f %.0f" role="img" xmlns="http://www.w3.org/2000/svg">`, w, h)
	fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#999"/>`, pad, h-pad, w, h-pad)
	fmt.Fprintf(&b, `<line class="limit" x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#b3261e" stroke-dasharray="6 4"/>`, pad, y(limit), w, y(limit))
	fmt.Fprintf(&b, `<text x="2" y="%.1f" font-size="11" fill="#b3261e">%g%s</text>`, y(limit)+4, limit, unit)
	fmt.Fprintf(&b, `<text x="2" y="%.1f" font-size="11" fill="#5b6677">0</text>`, h-pad+4)
	fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="11" fill="#5b6677">-60 min</text><text x="%.1f" y="%.1f" font-size="11" fill="#5b6677" text-anchor="end">now</text>`, pad, h-6, w, h-6)
	if len(values) > 0 {
		b.WriteString(`<polyline fill="none" stroke="#0b5cad" stroke-width="2" points="`)
		for i, v := range values {
			fmt.Fprintf(&b, "%.1f,%.1f ", x(at[i]), y(v))
		}
		b.WriteString(`"/>`)
	} else {
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="13" fill="#5b6677" text-anchor="middle">no figures yet</text>`, (w+pad)/2, h/2)
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}
