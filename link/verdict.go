package link

import "time"

// State is a link's verdict.
type State string

// Verdicts, from best to worst.
const (
	Unknown     State = "unknown" // too few probes yet
	OK          State = "ok"
	Degraded    State = "degraded"      // above 90 % of a limit
	OutOfLimits State = "out-of-limits" // above a limit
)

func rank(s State) int {
	switch s {
	case OK:
		return 1
	case Degraded:
		return 2
	case OutOfLimits:
		return 3
	}
	return 0
}

// Limits are what the central side requires of an uplink: packet loss in
// either direction at most Loss, and delay (the median round-trip time,
// as ping shows it) at most Delay.
type Limits struct {
	Loss  float64
	Delay time.Duration
}

// DefaultLimits are the central side's: at most 10 % loss and 100 ms
// delay to the Central Node (seeds/001).
var DefaultLimits = Limits{Loss: 0.10, Delay: 100 * time.Millisecond}

// Judge turns statistics into a verdict with hysteresis: a worse verdict
// holds at once, a better one only after the figures have stayed better
// for Hold, so a link near a limit does not flap.
type Judge struct {
	Limits Limits
	Hold   time.Duration // default 10s
	// MinProbes below which the verdict is Unknown. Default: 10.
	MinProbes int

	state       State
	better      State
	betterSince time.Time
}

// Raw is the verdict of one set of figures, without hysteresis.
func (j *Judge) Raw(st Stats) State {
	minProbes := j.MinProbes
	if minProbes == 0 {
		minProbes = 10
	}
	if st.Sent < minProbes {
		return Unknown
	}
	loss := max(st.LossOut, st.LossBack)
	delay := st.RTTP50
	if st.Received == 0 {
		return OutOfLimits
	}
	switch {
	case loss > j.Limits.Loss || delay > j.Limits.Delay:
		return OutOfLimits
	case loss > 0.9*j.Limits.Loss || float64(delay) > 0.9*float64(j.Limits.Delay):
		return Degraded
	}
	return OK
}

// Update judges new figures at now and reports the verdict and whether it
// changed.
func (j *Judge) Update(st Stats, now time.Time) (State, bool) {
	hold := j.Hold
	if hold == 0 {
		hold = 10 * time.Second
	}
	raw := j.Raw(st)
	prev := j.State()
	switch {
	case j.state == "" || j.state == Unknown || rank(raw) >= rank(j.state):
		if raw != Unknown || j.state == "" {
			j.state = raw
		}
		j.better = ""
	case raw != j.better:
		j.better, j.betterSince = raw, now
	case now.Sub(j.betterSince) >= hold:
		j.state, j.better = raw, ""
	}
	return j.State(), j.State() != prev
}

// State is the current verdict.
func (j *Judge) State() State {
	if j.state == "" {
		return Unknown
	}
	return j.state
}
