package link

import (
	"cmp"
	"context"
	"log/slog"
	"sync"
	"time"
)

// MonitorConfig configures a Monitor. Zero values mean the defaults in
// comments.
type MonitorConfig struct {
	Name   string // the link's name (e.g. the upstream's address)
	Target string // the reflector, host:port. Required.
	// Interval, Window and Timeout as in ProbeConfig (100ms, 30s, 2s).
	Interval, Window, Timeout time.Duration
	Limits                    Limits
	Hold                      time.Duration // hysteresis, default 10s
	Every                     time.Duration // how often the figures are judged, default 1s
	// OnChange is told of every verdict change.
	OnChange func(name string, from, to State, st Stats)
	Logger   *slog.Logger // default slog.Default()
}

// Monitor probes one link continuously and keeps its verdict.
type Monitor struct {
	cfg   MonitorConfig
	judge Judge

	mu     sync.Mutex
	p      *Prober
	stats  Stats
	state  State
	change time.Time
}

// NewMonitor builds a monitor; Run probes.
func NewMonitor(cfg MonitorConfig) *Monitor {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	cfg.Every = cmp.Or(cfg.Every, time.Second)
	return &Monitor{cfg: cfg, judge: Judge{Limits: cfg.Limits, Hold: cfg.Hold}, state: Unknown, change: time.Now()}
}

// Run probes, and judges the figures every Every (a second by default),
// until ctx ends. A target that does not resolve is tried again every
// window.
func (m *Monitor) Run(ctx context.Context) {
	for ctx.Err() == nil {
		p, err := NewProber(ProbeConfig{Target: m.cfg.Target, Interval: m.cfg.Interval, Window: m.cfg.Window, Timeout: m.cfg.Timeout})
		if err != nil {
			m.cfg.Logger.Warn("link: cannot probe", "link", m.cfg.Name, "target", m.cfg.Target, "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(max(m.cfg.Window, time.Second)):
				continue
			}
		}
		m.mu.Lock()
		m.p = p
		m.mu.Unlock()
		go p.Run(ctx) // ends with ctx
		t := time.NewTicker(m.cfg.Every)
		for {
			select {
			case <-ctx.Done():
				t.Stop()
				<-p.Done()
				return
			case now := <-t.C:
				m.evaluate(p.Stats(), now)
			}
		}
	}
}

func (m *Monitor) evaluate(st Stats, now time.Time) {
	m.mu.Lock()
	from := m.state
	to, changed := m.judge.Update(st, now)
	m.stats, m.state = st, to
	if changed {
		m.change = now
	}
	m.mu.Unlock()
	if !changed {
		return
	}
	level := slog.LevelInfo
	if to == OutOfLimits || to == Degraded {
		level = slog.LevelWarn
	}
	m.cfg.Logger.Log(context.Background(), level, "link verdict changed", "link", m.cfg.Name, "from", string(from), "to", string(to),
		"loss_out", st.LossOut, "loss_back", st.LossBack, "rtt_p50", st.RTTP50.String(), "limit_loss", m.cfg.Limits.Loss, "limit_delay", m.cfg.Limits.Delay.String())
	if m.cfg.OnChange != nil {
		m.cfg.OnChange(m.cfg.Name, from, to, st)
	}
}

// Status is a link as GET /v1/links shows it.
type Status struct {
	Name    string    `json:"name"`
	Target  string    `json:"target"`
	Verdict State     `json:"verdict"`
	Since   time.Time `json:"since"`
	Stats   Stats     `json:"stats"`
}

// Status returns the link's verdict and last figures.
func (m *Monitor) Status() Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	return Status{Name: m.cfg.Name, Target: m.cfg.Target, Verdict: m.state, Since: m.change.UTC(), Stats: m.stats}
}

// Verdict is the current verdict.
func (m *Monitor) Verdict() State {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.state
}
