//go:build linux

package chaos

import (
	"fmt"
	"io"
	"slices"
	"text/tabwriter"
	"time"
)

// Report is what Check finds in a history.
type Report struct {
	Published    int `json:"published"`
	Accepted     int `json:"accepted"` // answered 2xx: the promise applies
	Refused      int `json:"refused"`  // answered 4xx/5xx
	Failed       int `json:"failed"`   // no answer (timeout, refused connection)
	Lost         int `json:"lost"`     // accepted and never delivered: must be 0
	LostExamples []string
	Duplicates   int `json:"duplicates"` // deliveries beyond the first
	// LibraryDuplicates: copies the agent library dropped by id first.
	LibraryDuplicates uint64 `json:"library_duplicates"`
	// DeliveredUnacked counts pushes delivered although their publish got
	// no 2xx (a timeout after the commit): allowed, at least once.
	DeliveredUnacked int `json:"delivered_unacked"`
	// OrderViolations counts pairs A, B to one device where A was
	// answered before B was sent, yet B arrived first.
	OrderViolations int `json:"order_violations"`
	// SameNode counts those where A and B were accepted by the same node,
	// the order the documents promise outside faults.
	SameNode int           `json:"order_violations_same_node"`
	Faults   []FaultReport `json:"faults"`
}

// FaultReport is one fault's figures.
type FaultReport struct {
	Fault
	Attempts     int     `json:"attempts"`
	Availability float64 `json:"availability"` // share of the attempts made during the fault that were accepted
}

// Check judges a history.
func Check(h *History) Report {
	r := Report{LibraryDuplicates: h.LibraryDuplicates}
	delivered := map[string]int{}
	first := map[string]time.Time{}
	for _, d := range h.Deliveries {
		delivered[d.Payload]++
		if t, ok := first[d.Payload]; !ok || d.At.Before(t) {
			first[d.Payload] = d.At
		}
	}
	byDevice := map[string][]Publish{}
	accepted := map[string]bool{}
	for _, p := range h.Publishes {
		r.Published++
		switch p.Result {
		case "accepted":
			r.Accepted++
			accepted[p.Payload] = true
			if delivered[p.Payload] == 0 {
				r.Lost++
				if len(r.LostExamples) < 10 {
					r.LostExamples = append(r.LostExamples, fmt.Sprintf("%s to %s via node %d at %s (copies %d)", p.Payload, p.Device, p.Node, p.End.Format("15:04:05.000"), p.Copies))
				}
			}
			byDevice[p.Device] = append(byDevice[p.Device], p)
		case "refused":
			r.Refused++
		default:
			r.Failed++
		}
	}
	for payload, n := range delivered {
		r.Duplicates += n - 1
		if !accepted[payload] {
			r.DeliveredUnacked++
		}
	}
	for _, ps := range byDevice {
		slices.SortFunc(ps, func(a, b Publish) int { return a.End.Compare(b.End) })
		for i, a := range ps {
			ta, ok := first[a.Payload]
			if !ok {
				continue
			}
			for _, b := range ps[i+1:] {
				if !a.End.Before(b.Start) {
					continue // concurrent: no order promised
				}
				if tb, ok := first[b.Payload]; ok && tb.Before(ta) {
					r.OrderViolations++
					if a.Node == b.Node {
						r.SameNode++
					}
				}
			}
		}
	}
	for _, f := range h.Faults {
		fr := FaultReport{Fault: f}
		ok := 0
		for _, p := range h.Publishes {
			if !p.Start.Before(f.Start) && p.Start.Before(f.End) {
				fr.Attempts++
				if p.Result == "accepted" {
					ok++
				}
			}
		}
		if fr.Attempts > 0 {
			fr.Availability = float64(ok) / float64(fr.Attempts)
		}
		r.Faults = append(r.Faults, fr)
	}
	return r
}

// WriteTable prints the report for a person.
func (r Report) WriteTable(w io.Writer) {
	fmt.Fprintf(w, "published %d: accepted %d, refused %d, no answer %d\n", r.Published, r.Accepted, r.Refused, r.Failed)
	fmt.Fprintf(w, "LOST (accepted, never delivered): %d\n", r.Lost)
	for _, e := range r.LostExamples {
		fmt.Fprintf(w, "  %s\n", e)
	}
	fmt.Fprintf(w, "duplicates delivered: %d (and %d dropped by the agent library by message id); delivered without a 2xx: %d; order violations: %d (%d between pushes accepted by the same node)\n",
		r.Duplicates, r.LibraryDuplicates, r.DeliveredUnacked, r.OrderViolations, r.SameNode)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "fault\tnode\tlength\tattempts\taccepted\trecovered after heal\tnote")
	for _, f := range r.Faults {
		rec := "not within settle"
		if f.Recovered >= 0 {
			rec = f.Recovered.Round(100 * time.Millisecond).String()
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%.1f %%\t%s\t%s\n", f.Kind, f.Node, f.End.Sub(f.Start).Round(100*time.Millisecond), f.Attempts, 100*f.Availability, rec, f.Note)
	}
	tw.Flush()
}
