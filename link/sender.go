package link

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"math"
	"net"
	"slices"
	"sync"
	"time"
)

// Defaults of ProbeConfig's zero fields (internal/config's link.* keys
// use them too).
const (
	DefaultInterval = 100 * time.Millisecond
	DefaultWindow   = 30 * time.Second
	DefaultTimeout  = 2 * time.Second
)

// ProbeConfig configures a Prober. Zero values mean the defaults in
// comments.
type ProbeConfig struct {
	Target string // reflector host:port. Required.
	// Interval between test packets. Default: DefaultInterval.
	Interval time.Duration
	// Window the statistics cover. Default: DefaultWindow.
	Window time.Duration
	// Timeout: a probe unanswered this long is counted lost. Default:
	// DefaultTimeout.
	Timeout time.Duration
	// Count stops after this many probes (0: until the context ends).
	Count int
}

// Prober is a STAMP session-sender: it sends a test packet every
// Interval to one reflector and keeps what came back for Stats.
type Prober struct {
	cfg  ProbeConfig
	conn *net.UDPConn

	mu      sync.Mutex
	ring    []sample // by sequence number modulo its length
	next    uint32   // the next sequence number to send
	jitter  float64  // RFC 3550 estimator, seconds
	lastRTT time.Duration
	maxSeq  int64 // highest sequence answered so far, -1 before any
	dups    int
	reorder int
	done    chan struct{}
}

type sample struct {
	seq    uint32
	sent   time.Time
	rtt    time.Duration
	refSeq uint32
	ttl    uint8 // as the probe arrived at the reflector
	got    bool
	used   bool
}

// NewProber resolves the target and opens the socket.
func NewProber(cfg ProbeConfig) (*Prober, error) {
	cfg.Interval = cmp.Or(cfg.Interval, DefaultInterval)
	cfg.Window = cmp.Or(cfg.Window, DefaultWindow)
	cfg.Timeout = cmp.Or(cfg.Timeout, DefaultTimeout)
	raddr, err := net.ResolveUDPAddr("udp", cfg.Target)
	if err != nil {
		return nil, err
	}
	conn, err := net.DialUDP("udp", nil, raddr)
	if err != nil {
		return nil, err
	}
	n := int((cfg.Window+cfg.Timeout)/cfg.Interval) + 64
	if cfg.Count > 0 {
		n = min(n, cfg.Count+64) // a bounded run needs no more, whatever the window
	}
	return &Prober{cfg: cfg, conn: conn, ring: make([]sample, n), maxSeq: -1, done: make(chan struct{})}, nil
}

// Run probes until ctx ends (or Count probes were sent and the last
// answered or timed out), then closes the socket.
func (p *Prober) Run(ctx context.Context) error {
	defer close(p.done)
	go p.receive() // ends when the socket closes
	defer p.conn.Close()
	t := time.NewTicker(p.cfg.Interval)
	defer t.Stop()
	buf := make([]byte, PacketSize)
	for sent := 0; p.cfg.Count == 0 || sent < p.cfg.Count; sent++ {
		p.mu.Lock()
		seq := p.next
		p.next++
		now := time.Now()
		p.ring[int(seq)%len(p.ring)] = sample{seq: seq, sent: now, used: true}
		p.mu.Unlock()
		pkt := Sender{Seq: seq, Timestamp: now, ErrorEst: errorEstimate}
		p.conn.Write(pkt.Marshal(buf)) // a send error is a lost probe
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
	select { // the last answers
	case <-ctx.Done():
	case <-time.After(p.cfg.Timeout):
	}
	return nil
}

// Done is closed when Run has returned.
func (p *Prober) Done() <-chan struct{} { return p.done }

func (p *Prober) receive() {
	buf := make([]byte, 1500)
	for {
		n, err := p.conn.Read(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // e.g. ICMP port unreachable surfaced as an error
		}
		now := time.Now()
		r, err := ParseReflected(buf[:n])
		if err != nil {
			continue
		}
		p.mu.Lock()
		s := &p.ring[int(r.SenderSeq)%len(p.ring)]
		switch {
		case !s.used || s.seq != r.SenderSeq:
			// too old for the ring, or not ours
		case s.got:
			p.dups++
		default:
			s.got, s.rtt, s.refSeq, s.ttl = true, now.Sub(s.sent), r.Seq, r.SenderTTL
			if int64(r.SenderSeq) < p.maxSeq {
				p.reorder++
			} else {
				p.maxSeq = int64(r.SenderSeq)
			}
			// RFC 3550 6.4.1: J += (|D| - J) / 16, D the difference of
			// transit times of consecutive packets (here round trips).
			if p.lastRTT != 0 {
				d := (s.rtt - p.lastRTT).Seconds()
				if d < 0 {
					d = -d
				}
				p.jitter += (d - p.jitter) / 16
			}
			p.lastRTT = s.rtt
		}
		p.mu.Unlock()
	}
}

// ProbeSample is one probe as the sender saw it.
type ProbeSample struct {
	Seq      uint32
	Sent     time.Time
	Answered bool
	RTT      time.Duration // when answered
}

// Samples returns the probes still in the ring (the last Window and
// Timeout of them), oldest first: for reports that chart a run.
func (p *Prober) Samples() []ProbeSample {
	p.mu.Lock()
	out := make([]ProbeSample, 0, len(p.ring))
	for _, s := range p.ring {
		if s.used {
			out = append(out, ProbeSample{Seq: s.seq, Sent: s.sent, Answered: s.got, RTT: s.rtt})
		}
	}
	p.mu.Unlock()
	slices.SortFunc(out, func(a, b ProbeSample) int { return cmp.Compare(a.Seq, b.Seq) })
	return out
}

// Stats are one link's figures over the window. In JSON, durations are
// milliseconds (statsJSON).
type Stats struct {
	Target     string
	Sent       int     // probes old enough to be judged
	Received   int     // of those, answered
	Loss       float64 // round trip, 0..1
	LossOut    float64 // towards the reflector
	LossBack   float64
	RTTMin     time.Duration
	RTTP50     time.Duration
	RTTP90     time.Duration
	RTTP99     time.Duration
	RTTMax     time.Duration
	Jitter     time.Duration
	Duplicates int
	Reordered  int
	// ReflectorTTL is the TTL (hop limit) the latest answered probe of the
	// window had when it reached the reflector; 0 when the reflector does
	// not say. The
	// sender starts at the system default (64 on Linux), so the
	// difference is the hops on the way there.
	ReflectorTTL uint8
	WindowStart  time.Time
}

// Stats computes the figures over the last Window: loss over the probes
// older than Timeout (younger ones may still be answered), round-trip
// times over every answered one, so a change of delay shows without the
// Timeout's lag.
func (p *Prober) Stats() Stats {
	now := time.Now()
	from, to := now.Add(-p.cfg.Window-p.cfg.Timeout), now.Add(-p.cfg.Timeout)
	rttFrom := now.Add(-p.cfg.Window)
	st := Stats{Target: p.cfg.Target, WindowStart: from}
	p.mu.Lock()
	var rtts []time.Duration
	var first, last *sample
	received := make([]sample, 0, len(p.ring))
	for i := range p.ring {
		s := &p.ring[i]
		if s.used && s.got && !s.sent.Before(rttFrom) {
			rtts = append(rtts, s.rtt)
		}
		if !s.used || s.sent.Before(from) || s.sent.After(to) {
			continue
		}
		st.Sent++
		if s.got {
			st.Received++
			received = append(received, *s)
			if first == nil || s.seq < first.seq {
				first = s
			}
			if last == nil || s.seq > last.seq {
				last = s
				st.ReflectorTTL = s.ttl
			}
		}
	}
	st.Jitter = time.Duration(p.jitter * float64(time.Second))
	st.Duplicates, st.Reordered = p.dups, p.reorder
	var firstSeq, lastSeq, firstRef, lastRef uint32
	if first != nil {
		firstSeq, lastSeq, firstRef, lastRef = first.seq, last.seq, first.refSeq, last.refSeq
	}
	p.mu.Unlock()
	if st.Sent > 0 {
		st.Loss = 1 - float64(st.Received)/float64(st.Sent)
	}
	// Per direction, from the reflector's own numbering: between the
	// first and the last answered probe, the reflector saw lastRef -
	// firstRef + 1 of the lastSeq - firstSeq + 1 sent. That holds while
	// its numbering runs on: a reflector restarted (or one that forgot
	// the session) numbers from the start again, and what was lost in
	// between cannot be given a direction, so both get the round-trip
	// loss until the restart has left the window.
	switch {
	case st.Received >= 2 && renumbered(received):
		st.LossOut, st.LossBack = st.Loss, st.Loss
	case st.Received >= 2 && lastRef >= firstRef:
		sent := float64(lastSeq - firstSeq + 1)
		reached := float64(lastRef - firstRef + 1)
		got := 0
		for _, s := range received {
			if s.seq >= firstSeq && s.seq <= lastSeq {
				got++
			}
		}
		st.LossOut = max(0, 1-reached/sent)
		st.LossBack = max(0, 1-float64(got)/reached)
	case st.Sent > 0 && st.Received == 0:
		st.LossOut, st.LossBack = 1, 1 // nothing back: the direction is unknown, both judged lost
	}
	if len(rtts) > 0 {
		slices.Sort(rtts)
		q := func(f float64) time.Duration { return rtts[min(len(rtts)-1, int(f*float64(len(rtts))))] }
		st.RTTMin, st.RTTP50, st.RTTP90, st.RTTP99, st.RTTMax = rtts[0], q(0.5), q(0.9), q(0.99), rtts[len(rtts)-1]
	}
	return st
}

// millis is d in milliseconds, to the microsecond.
func millis(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// fromMillis is the duration millis wrote.
func fromMillis(ms float64) time.Duration {
	return time.Duration(math.Round(ms*1000)) * time.Microsecond
}

// statsJSON is Stats as the admin API writes it: durations in
// milliseconds, to the microsecond (rtt_p50_ms and so on).
type statsJSON struct {
	Target       string    `json:"target"`
	Sent         int       `json:"sent"`
	Received     int       `json:"received"`
	Loss         float64   `json:"loss"`
	LossOut      float64   `json:"loss_out"`
	LossBack     float64   `json:"loss_back"`
	RTTMin       float64   `json:"rtt_min_ms"`
	RTTP50       float64   `json:"rtt_p50_ms"`
	RTTP90       float64   `json:"rtt_p90_ms"`
	RTTP99       float64   `json:"rtt_p99_ms"`
	RTTMax       float64   `json:"rtt_max_ms"`
	Jitter       float64   `json:"jitter_ms"`
	Duplicates   int       `json:"duplicates"`
	Reordered    int       `json:"reordered"`
	ReflectorTTL uint8     `json:"reflector_ttl"`
	WindowStart  time.Time `json:"window_start"`
}

// MarshalJSON writes durations as milliseconds (statsJSON).
func (s Stats) MarshalJSON() ([]byte, error) {
	return json.Marshal(statsJSON{s.Target, s.Sent, s.Received, s.Loss, s.LossOut, s.LossBack, millis(s.RTTMin), millis(s.RTTP50), millis(s.RTTP90), millis(s.RTTP99), millis(s.RTTMax), millis(s.Jitter), s.Duplicates, s.Reordered, s.ReflectorTTL, s.WindowStart})
}

// UnmarshalJSON reads what MarshalJSON writes, so that the API's
// clients see the figures it sent.
func (s *Stats) UnmarshalJSON(b []byte) error {
	var j statsJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*s = Stats{j.Target, j.Sent, j.Received, j.Loss, j.LossOut, j.LossBack, fromMillis(j.RTTMin), fromMillis(j.RTTP50), fromMillis(j.RTTP90), fromMillis(j.RTTP99), fromMillis(j.RTTMax), fromMillis(j.Jitter), j.Duplicates, j.Reordered, j.ReflectorTTL, j.WindowStart}
	return nil
}

// renumbered reports whether the reflector's numbering went back within
// the answered probes, taken in the order they were sent: it restarted.
func renumbered(received []sample) bool {
	slices.SortFunc(received, func(a, b sample) int { return cmp.Compare(a.seq, b.seq) })
	for i := 1; i < len(received); i++ {
		if received[i].refSeq < received[i-1].refSeq {
			return true
		}
	}
	return false
}
