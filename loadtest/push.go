package loadtest

import (
	"bufio"
	"cmp"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// PushBenchConfig drives dpload push.
type PushBenchConfig struct {
	Self   string // the dpload binary, re-run as "dpload agents"
	Server string // push address
	Admin  string // admin API base URL, e.g. http://127.0.0.1:13290
	Token  string // admin bearer token, if any
	// Credentials are the agents' tokens or certificates.
	Credentials Credentials
	Pin         string
	PID         int // server process, for RSS; 0 skips memory figures
	QUIC        bool
	Agents      int
	Procs       int // agent processes; 0: one per 9,000 agents
	SourceIPs   int // spread agents over 127.0.0.2 .. 127.0.0.(1+SourceIPs)
	Rate        float64
	Duration    time.Duration
	Scenarios   []string // memory, latency, broadcast, storm
	Progress    Progress
}

// PushReport is what dpload push measured.
type PushReport struct {
	Agents         int     `json:"agents"`
	Procs          int     `json:"procs"`
	Transport      string  `json:"transport"`
	ConnectSeconds float64 `json:"connect_seconds"`
	RSSBaseline    int64   `json:"rss_baseline_bytes,omitempty"`
	RSSConnected   int64   `json:"rss_connected_bytes,omitempty"`
	PerConnBytes   float64 `json:"rss_per_connection_bytes,omitempty"`

	Latency   *PushLatency   `json:"latency,omitempty"`
	Broadcast *PushBroadcast `json:"broadcast,omitempty"`
	Storm     *PushStorm     `json:"storm,omitempty"`

	Timeline    []TimePoint `json:"timeline,omitempty"`          // agents connected while starting
	LatencyBars []Bar       `json:"latency_histogram,omitempty"` // publish -> receive
	// Interrupted: the run was stopped (Ctrl-C); the scenarios it
	// finished are in the report.
	Interrupted bool `json:"interrupted,omitempty"`
}

// PushLatency is the publish-to-receive figure at a paced rate.
type PushLatency struct {
	Rate      float64 `json:"rate"`
	Published int64   `json:"published"`
	Received  int64   `json:"received"`
	Failed    int64   `json:"failed"`
	P50ms     float64 `json:"p50_ms"`
	P99ms     float64 `json:"p99_ms"`
	P999ms    float64 `json:"p999_ms"`
	MaxMs     float64 `json:"max_ms"`
}

// PushBroadcast is one push to every agent. With the scenario listed more
// than once, the report keeps the last: Received is that broadcast's own,
// P50ms and LastMs are over every broadcast of the run.
type PushBroadcast struct {
	Devices  int     `json:"devices"`
	Received int64   `json:"received"`
	P50ms    float64 `json:"p50_ms"`
	LastMs   float64 `json:"last_ms"` // until the last agent had it
}

// PushStorm is every agent reconnecting at once, with pushes published
// meanwhile.
type PushStorm struct {
	BackSeconds float64 `json:"back_seconds"`
	PeakRSS     int64   `json:"peak_rss_bytes,omitempty"`
	Published   int64   `json:"published"`
	Received    int64   `json:"received"`
	Lost        int64   `json:"lost"`
}

// fleetProc is one "dpload agents" child.
type fleetProc struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Reader
	mu  sync.Mutex
}

func (p *fleetProc) ask(cmd string, v any) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, err := fmt.Fprintln(p.in, cmd); err != nil {
		return err
	}
	line, err := p.out.ReadBytes('\n')
	if err != nil {
		return fmt.Errorf("agents process: %w", err)
	}
	return json.Unmarshal(line, v)
}

// startFleetProc runs "dpload agents ARGS" (self is the dpload binary),
// answering commands on its standard input.
func startFleetProc(ctx context.Context, self string, quic bool, args ...string) (*fleetProc, error) {
	args = append([]string{"agents"}, args...)
	if quic {
		args = append(args, "--quic")
	}
	cmd := exec.CommandContext(ctx, self, args...)
	in, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return &fleetProc{cmd: cmd, in: in, out: bufio.NewReader(out)}, nil
}

// startFleets splits agents over at most procs "dpload agents" processes
// (agent ids from 0; every process gets some) with the flags in extra,
// and starts them. On an error it stops those already started.
func startFleets(ctx context.Context, self string, quic bool, agents, procs int, extra ...string) (fleets, error) {
	var fl fleets
	per := (agents + procs - 1) / procs
	for first := 0; first < agents; first += per {
		args := append([]string{"--first", strconv.Itoa(first), "--count", strconv.Itoa(min(per, agents-first))}, extra...)
		p, err := startFleetProc(ctx, self, quic, args...)
		if err != nil {
			stopFleets(fl)
			return nil, err
		}
		fl = append(fl, p)
	}
	return fl, nil
}

// stopFleets asks every agent process to quit, killing any still there
// after 10 s.
// agentRun is what startAgents needs: the dpload binary, the agents and
// their processes, their credentials and the admin APIs that take them.
type agentRun struct {
	self        string
	quic        bool
	agents      int
	procs       int
	credentials Credentials
	admins      []string
	token       string
	progress    Progress
}

// startAgents prepares the agents' credentials and starts their
// processes; stop ends both, the processes first.
func startAgents(ctx context.Context, a agentRun, args ...string) (_ fleets, stop func(), _ error) {
	creds, undo, err := a.credentials.prepare(ctx, a.agents, a.admins, a.token, a.progress)
	if err != nil {
		return nil, nil, err
	}
	fl, err := startFleets(ctx, a.self, a.quic, a.agents, a.procs, append(args, creds...)...)
	if err != nil {
		undo()
		return nil, nil, err
	}
	return fl, func() { stopFleets(fl); undo() }, nil
}

func stopFleets(fl fleets) {
	for _, p := range fl {
		fmt.Fprintln(p.in, "quit")
		p.in.Close()
		done := make(chan struct{})
		go func() { p.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			p.cmd.Process.Kill()
			<-done
		}
	}
}

type fleets []*fleetProc

func (fs fleets) status() (FleetStatus, error) {
	total := FleetStatus{Received: map[string]int64{}}
	for _, p := range fs {
		var st FleetStatus
		if err := p.ask("status", &st); err != nil {
			return total, err
		}
		total.Connected += st.Connected
		for k, v := range st.Received {
			total.Received[k] += v
		}
		for k, v := range st.Failures {
			if total.Failures == nil {
				total.Failures = map[string]int64{}
			}
			total.Failures[k] += v
		}
		total.LastError = cmp.Or(st.LastError, total.LastError)
	}
	return total, nil
}

func (fs fleets) hist(kind string) (*hdrhistogram.Histogram, error) {
	var merged *hdrhistogram.Histogram
	for _, p := range fs {
		var hs map[string]*hdrhistogram.Snapshot
		if err := p.ask("hist", &hs); err != nil {
			return nil, err
		}
		if s := hs[kind]; s != nil {
			h := hdrhistogram.Import(s)
			if merged == nil {
				merged = h
			} else {
				merged.Merge(h)
			}
		}
	}
	if merged == nil {
		merged = hdrhistogram.New(1, 120_000_000, 3)
	}
	return merged, nil
}

// RunPushBench starts the agent processes and runs the scenarios.
func RunPushBench(ctx context.Context, cfg PushBenchConfig) (PushReport, error) {
	rep := PushReport{Agents: cfg.Agents, Transport: "tls"}
	if cfg.QUIC {
		rep.Transport = "quic"
	}
	if cfg.Procs == 0 {
		cfg.Procs = (cfg.Agents + 8999) / 9000
	}
	rep.Procs = cfg.Procs
	progress := cfg.Progress.note
	if cfg.PID != 0 {
		rep.RSSBaseline, _ = ProcessRSS(cfg.PID)
	}
	start := time.Now()
	agentArgs := []string{"--server", cfg.Server, "--pin", cfg.Pin, "--source-ips", strconv.Itoa(cfg.SourceIPs)}
	fl, stop, err := startAgents(ctx, agentRun{cfg.Self, cfg.QUIC, cfg.Agents, cfg.Procs, cfg.Credentials, []string{cfg.Admin}, cfg.Token, cfg.Progress}, agentArgs...)
	if err != nil {
		return rep, err
	}
	defer stop()
	progress("connecting %d agents from %d processes", cfg.Agents, len(fl))
	if err := waitConnected(ctx, fl, cfg.Agents, 5*time.Minute, cfg.Progress, start, &rep.Timeline); err != nil {
		return rep, err
	}
	rep.ConnectSeconds = time.Since(start).Seconds()
	if cfg.PID != 0 {
		time.Sleep(3 * time.Second) // let the server's GC settle before reading RSS
		rep.RSSConnected, _ = ProcessRSS(cfg.PID)
		rep.PerConnBytes = float64(rep.RSSConnected-rep.RSSBaseline) / float64(cfg.Agents)
	}
	pub := newPublisher(cfg)
	for _, sc := range cfg.Scenarios {
		if ctx.Err() != nil { // Ctrl-C: the scenarios done so far
			rep.Interrupted = true
			return rep, ctx.Err()
		}
		switch sc {
		case "memory":
		case "latency":
			progress("latency: %.0f pushes/s to random devices for %v", cfg.Rate, cfg.Duration)
			sent, failed := pub.paced(ctx, cfg.Rate, cfg.Duration, KindLatency)
			err := waitReceived(ctx, fl, string(KindLatency), sent, 60*time.Second)
			st, _ := fl.status()
			h, herr := fl.hist(string(KindLatency))
			if herr != nil {
				return rep.cut(ctx, herr)
			}
			rep.Latency = &PushLatency{cfg.Rate, sent, st.Received[string(KindLatency)], failed,
				ms(h.ValueAtQuantile(50)), ms(h.ValueAtQuantile(99)), ms(h.ValueAtQuantile(99.9)), ms(h.Max())}
			rep.LatencyBars = Bars(h, 40)
			if err != nil {
				progress("latency: %v", err)
			}
		case "broadcast":
			progress("broadcast to all %d", cfg.Agents)
			// The agents count broadcast pushes over the run: a broadcast
			// listed again waits for its own and reports its own.
			st, err := fl.status()
			if err != nil {
				return rep.cut(ctx, err)
			}
			before := st.Received[string(KindBroadcast)]
			if err := pub.all(ctx); err != nil {
				return rep.cut(ctx, err)
			}
			err = waitReceived(ctx, fl, string(KindBroadcast), before+int64(cfg.Agents), 120*time.Second)
			st, _ = fl.status()
			h, herr := fl.hist(string(KindBroadcast))
			if herr != nil {
				return rep.cut(ctx, herr)
			}
			rep.Broadcast = &PushBroadcast{cfg.Agents, st.Received[string(KindBroadcast)] - before, ms(h.ValueAtQuantile(50)), ms(h.Max())}
			if err != nil {
				progress("broadcast: %v", err)
			}
		case "storm":
			progress("reconnect storm: all %d agents drop their connections at once", cfg.Agents)
			r, err := storm(ctx, cfg, fl, pub)
			if err != nil {
				return rep.cut(ctx, err)
			}
			rep.Storm = r
		default:
			return rep, fmt.Errorf("unknown scenario %q", sc)
		}
	}
	return rep, nil
}

// cut ends a run on a scenario's error; after Ctrl-C (the agent
// processes get the signal too) that is the interruption, not the error.
func (rep PushReport) cut(ctx context.Context, err error) (PushReport, error) {
	if ctx.Err() != nil {
		rep.Interrupted = true
		return rep, ctx.Err()
	}
	return rep, err
}

func ms(us int64) float64 { return float64(us) / 1000 }

// waitConnected polls until want agents are connected; timeline, when
// not nil, gets a point per poll (seconds since since).
func waitConnected(ctx context.Context, fl fleets, want int, timeout time.Duration, progress Progress, since time.Time, timeline *[]TimePoint) error {
	deadline := time.Now().Add(timeout)
	for {
		st, err := fl.status()
		if err != nil {
			return err
		}
		if timeline != nil {
			*timeline = append(*timeline, TimePoint{time.Since(since).Seconds(), st.Connected})
		}
		progress.count("connected", st.Connected, int64(want))
		if st.Connected >= int64(want) {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("only %d of %d agents connected after %v", st.Connected, want, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func waitReceived(ctx context.Context, fl fleets, kind string, want int64, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		st, err := fl.status()
		if err != nil {
			return err
		}
		if st.Received[kind] >= want {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("received %d of %d %s pushes after %v", st.Received[kind], want, kind, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// publisher posts pushes to the admin API, as a management server would.
type publisher struct {
	cfg  PushBenchConfig
	http *http.Client
}

func newPublisher(cfg PushBenchConfig) *publisher {
	tr := &http.Transport{MaxIdleConnsPerHost: 64, MaxConnsPerHost: 64}
	return &publisher{cfg: cfg, http: &http.Client{Transport: tr, Timeout: time.Minute}}
}

func (p *publisher) post(ctx context.Context, path string, body any) error {
	data, _ := json.Marshal(body)
	req, err := http.NewRequestWithContext(ctx, "POST", p.cfg.Admin+path, strings.NewReader(string(data)))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if p.cfg.Token != "" {
		req.Header.Set("Authorization", "Bearer "+p.cfg.Token)
	}
	resp, err := p.http.Do(req)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return errors.New(resp.Status)
	}
	return nil
}

func (p *publisher) one(ctx context.Context, device string, kind byte) error {
	b64 := base64.StdEncoding.EncodeToString(StampedPayload(kind))
	return p.post(ctx, "/v1/devices/"+device+"/push", map[string]any{"data_base64": b64, "ttl": "1h"})
}

func (p *publisher) all(ctx context.Context) error {
	b64 := base64.StdEncoding.EncodeToString(StampedPayload(KindBroadcast))
	return p.post(ctx, "/v1/push", map[string]any{"data_base64": b64, "ttl": "1h", "all": true})
}

// paced publishes to random devices at rate for d (open loop: the
// schedule does not wait for slow answers) and returns how many the API
// accepted and how many it refused.
func (p *publisher) paced(ctx context.Context, rate float64, d time.Duration, kind byte) (sent, failed int64) {
	var ok, bad atomic.Int64
	jobs := make(chan struct{}, 4096)
	var wg sync.WaitGroup
	for range 48 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range jobs {
				dev := "agent-" + strconv.Itoa(rand.IntN(p.cfg.Agents))
				if p.one(ctx, dev, kind) == nil {
					ok.Add(1)
				} else {
					bad.Add(1)
				}
			}
		}()
	}
	interval := time.Duration(float64(time.Second) / rate)
	start := time.Now()
	n := int64(d.Seconds() * rate)
	for i := int64(0); i < n && ctx.Err() == nil; i++ {
		if w := time.Until(start.Add(time.Duration(i) * interval)); w > 0 {
			time.Sleep(w)
		}
		jobs <- struct{}{}
	}
	close(jobs)
	wg.Wait()
	return ok.Load(), bad.Load()
}

func storm(ctx context.Context, cfg PushBenchConfig, fl fleets, pub *publisher) (*PushStorm, error) {
	out := &PushStorm{}
	stop := make(chan struct{})
	var peak atomic.Int64
	if cfg.PID != 0 {
		go func() { // samples the server's RSS until the storm is over
			t := time.NewTicker(20 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-stop:
					return
				case <-t.C:
					if r, err := ProcessRSS(cfg.PID); err == nil && r > peak.Load() {
						peak.Store(r)
					}
				}
			}
		}()
	}
	start := time.Now()
	for _, p := range fl {
		var ok map[string]bool
		if err := p.ask("storm", &ok); err != nil {
			close(stop)
			return nil, err
		}
	}
	// Publish during the storm: these must all arrive.
	pubDone := make(chan struct{})
	var published atomic.Int64
	go func() {
		s, _ := pub.paced(ctx, 500, 4*time.Second, KindStorm)
		published.Store(s)
		close(pubDone)
	}()
	err := waitConnected(ctx, fl, cfg.Agents, 5*time.Minute, cfg.Progress, time.Now(), nil)
	out.BackSeconds = time.Since(start).Seconds()
	<-pubDone
	close(stop)
	out.PeakRSS = peak.Load()
	out.Published = published.Load()
	if err != nil {
		return out, err
	}
	werr := waitReceived(ctx, fl, string(KindStorm), out.Published, 120*time.Second)
	st, _ := fl.status()
	out.Received = st.Received[string(KindStorm)]
	out.Lost = max(0, out.Published-out.Received)
	if werr != nil {
		cfg.Progress.note("storm: %v", werr)
	}
	return out, nil
}
