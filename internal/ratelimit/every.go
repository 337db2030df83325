package ratelimit

import (
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Every runs an action (a log line) at most once per interval, telling it
// how many events it stands for: a line that could come once per push or
// per connection, as fast as a peer or an attacker makes them, stays
// readable, and a flood cannot push everything else out of the journal
// (journald drops a service's lines past its rate limit).
type Every struct {
	s rate.Sometimes
	n atomic.Int64
}

// NewEvery runs the action at most once per interval, the first event's
// at once.
func NewEvery(interval time.Duration) *Every {
	return &Every{s: rate.Sometimes{Interval: interval}}
}

// Do records n events and, unless the action ran less than an interval
// ago, runs it with the events since it last ran (these n included).
func (e *Every) Do(n int64, action func(events int64)) {
	e.n.Add(n)
	e.s.Do(func() { action(e.n.Swap(0)) })
}
