package loadtest

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Limits the figures are judged against: what the products this gateway
// stands in for are documented to hold (docs/BENCHMARKS.md, seeds/).
const (
	LimitManagementServer = 300   // continuous connections of a management server
	LimitPushServer       = 50000 // connections of a distribution-point push server
	LimitConnGateway      = 10000 // devices of a connection gateway
	LimitSensorGbit       = 1.0   // Gbit/s through a Sensor acting as proxy
	LimitUplinkLoss       = 0.10  // uplink packet loss
	LimitUplinkDelayMs    = 100.0 // uplink delay (round trip)
	perProcessAgents      = 18000 // a process may hold at most 20,000 open files
)

// ConnectConfig configures RunConnect.
type ConnectConfig struct {
	Servers   []string // push addresses; agents are spread over them
	Admins    []string // their admin API base URLs, for server figures (optional)
	Token     string   // the admin APIs' bearer token
	Pin       string
	QUIC      bool
	Agents    int
	Procs     int     // agent processes; 0: enough to keep each under 18,000
	Ramp      float64 // new connections per second, all processes together
	Hold      time.Duration
	SourceIPs int
	// Credentials are the agents' tokens or certificates.
	Credentials Credentials
	// FailFast: with no agent connected and attempts failing this long,
	// stop and say why. Default: DefaultFailFast; negative: never.
	FailFast time.Duration
	Self     string // the dpload binary
	Progress Progress
}

// DefaultFailFast: with no agent connected and attempts failing this
// long, connect stops and says why, rather than retrying for minutes.
const DefaultFailFast = 10 * time.Second

// NodeFigures are one gateway's figures read from its admin API.
type NodeFigures struct {
	Admin        string  `json:"admin"`
	Sessions     int     `json:"sessions"`
	RSSBefore    int64   `json:"rss_before_bytes"`
	RSSAfter     int64   `json:"rss_after_bytes"`
	PerConnBytes float64 `json:"per_connection_bytes"`
	OpenFiles    int     `json:"open_files"`
}

// ConnectReport is what RunConnect measured.
type ConnectReport struct {
	Agents        int              `json:"agents"`
	Procs         int              `json:"procs"`
	Servers       []string         `json:"servers"`
	Connected     int64            `json:"connected"`
	HeldAfterHold int64            `json:"held_after_hold"`
	Seconds       float64          `json:"seconds_to_connect"`
	Rate          float64          `json:"connects_per_second"`
	HandshakeP50  float64          `json:"handshake_p50_ms"`
	HandshakeP99  float64          `json:"handshake_p99_ms"`
	HandshakeMax  float64          `json:"handshake_max_ms"`
	Failures      map[string]int64 `json:"failures"`
	Nodes         []NodeFigures    `json:"nodes,omitempty"`
	Timeline      []TimePoint      `json:"timeline"` // connections over time
	Latency       []Bar            `json:"connect_time_histogram"`
	// Interrupted: the run was stopped (Ctrl-C) and these are the
	// figures up to then.
	Interrupted bool `json:"interrupted,omitempty"`
}

// TimePoint is the number of connected agents at a moment.
type TimePoint struct {
	Seconds   float64 `json:"t"`
	Connected int64   `json:"connected"`
}

// RunConnect connects the agents from worker processes, holds them, and
// reports.
func RunConnect(ctx context.Context, cfg ConnectConfig) (ConnectReport, error) {
	if cfg.Procs == 0 {
		cfg.Procs = (cfg.Agents + perProcessAgents - 1) / perProcessAgents
	}
	if cfg.Ramp == 0 {
		cfg.Ramp = 1000
	}
	failFast := cmp.Or(cfg.FailFast, DefaultFailFast)
	progress := cfg.Progress.note
	rep := ConnectReport{Agents: cfg.Agents, Procs: cfg.Procs, Servers: cfg.Servers, Failures: map[string]int64{}}
	for _, a := range cfg.Admins {
		st, err := nodeStatus(ctx, a, cfg.Token)
		if err != nil {
			return rep, fmt.Errorf("admin API %s: %w", a, err)
		}
		rep.Nodes = append(rep.Nodes, NodeFigures{Admin: a, RSSBefore: st.RSSBytes})
	}
	start := time.Now()
	agentArgs := []string{"--server", strings.Join(cfg.Servers, ","), "--pin", cfg.Pin,
		"--source-ips", strconv.Itoa(cfg.SourceIPs), "--ramp", strconv.FormatFloat(cfg.Ramp/float64(cfg.Procs), 'f', 1, 64)}
	fl, stop, err := startAgents(ctx, agentRun{cfg.Self, cfg.QUIC, cfg.Agents, cfg.Procs, cfg.Credentials, cfg.Admins, cfg.Token, cfg.Progress}, agentArgs...)
	if err != nil {
		return rep, err
	}
	defer stop()
	progress("connecting %d agents to %d servers from %d processes at %.0f/s", cfg.Agents, len(cfg.Servers), len(fl), cfg.Ramp)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	deadline := start.Add(time.Duration(float64(cfg.Agents)/cfg.Ramp*float64(time.Second)) + 5*time.Minute)
	var best int64
	bestAt := time.Now()
	for {
		st, err := fl.status()
		if err != nil {
			return rep, err
		}
		rep.Timeline = append(rep.Timeline, TimePoint{time.Since(start).Seconds(), st.Connected})
		if st.Connected > best {
			best, bestAt = st.Connected, time.Now()
		}
		cfg.Progress.count("connected", st.Connected, int64(cfg.Agents))
		if failed := sumOf(st.Failures); best == 0 && failed > 0 && failFast > 0 && time.Since(start) > failFast {
			rep.Failures = st.Failures
			return rep, fmt.Errorf("no agent connected in %s, %d attempts failed (%s); the gateway's answer to the last one: %s%s",
				failFast, failed, failureList(st.Failures), st.LastError, credentialsHint(st.LastError))
		}
		if st.Connected >= int64(cfg.Agents) || time.Now().After(deadline) || time.Since(bestAt) > time.Minute {
			rep.Connected = st.Connected
			break
		}
		select {
		case <-ctx.Done():
			rep.Connected, rep.Failures = st.Connected, st.Failures
			rep.Seconds = time.Since(start).Seconds()
			rep.Rate = float64(rep.Connected) / rep.Seconds
			return rep.interrupted(ctx, fl, cfg.Token)
		case <-tick.C:
		}
	}
	rep.Seconds = time.Since(start).Seconds()
	rep.Rate = float64(rep.Connected) / rep.Seconds
	progress("holding %d connections for %s", rep.Connected, cfg.Hold)
	select {
	case <-ctx.Done():
		return rep.interrupted(ctx, fl, cfg.Token)
	case <-time.After(cfg.Hold):
	}
	st, err := fl.status()
	if err != nil {
		return rep, err
	}
	rep.HeldAfterHold = st.Connected
	rep.Failures = st.Failures
	if err := rep.connectTimes(fl); err != nil {
		return rep, err
	}
	return rep, rep.nodeFigures(ctx, cfg.Token)
}

// connectTimes reads the agents' connect-time histogram.
func (rep *ConnectReport) connectTimes(fl fleets) error {
	h, err := fl.hist(string(KindConnect))
	if err != nil {
		return err
	}
	rep.HandshakeP50, rep.HandshakeP99, rep.HandshakeMax = ms(h.ValueAtQuantile(50)), ms(h.ValueAtQuantile(99)), ms(h.Max())
	rep.Latency = Bars(h, 40)
	return nil
}

// nodeFigures reads each gateway's sessions, RSS and open files.
func (rep *ConnectReport) nodeFigures(ctx context.Context, token string) error {
	for i := range rep.Nodes {
		st, err := nodeStatus(ctx, rep.Nodes[i].Admin, token)
		if err != nil {
			return err
		}
		n := &rep.Nodes[i]
		n.RSSAfter, n.OpenFiles = st.RSSBytes, st.OpenFiles
		if st.Push != nil {
			n.Sessions = st.Push.Sessions
		}
		if n.Sessions > 0 {
			n.PerConnBytes = float64(n.RSSAfter-n.RSSBefore) / float64(n.Sessions)
		}
	}
	return nil
}

// interrupted completes a report cut short by Ctrl-C with what can still
// be read (the agents' connect times while their processes live, each
// gateway's figures; a few seconds at most) and returns it with ctx's
// error.
func (rep ConnectReport) interrupted(ctx context.Context, fl fleets, token string) (ConnectReport, error) {
	rep.Interrupted = true
	rep.HeldAfterHold = rep.Connected
	rep.connectTimes(fl) // the agent processes may have had the signal too
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	rep.nodeFigures(rctx, token)
	return rep, ctx.Err()
}

// nodeFigures is the part of a gateway's /v1/status a load test reads.
type nodeFigures struct {
	RSSBytes  int64 `json:"rss_bytes"`
	OpenFiles int   `json:"open_files"`
	Push      *struct {
		Sessions int `json:"sessions"`
	} `json:"push"`
}

func nodeStatus(ctx context.Context, base, token string) (nodeFigures, error) {
	var st nodeFigures
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v1/status", nil)
	if err != nil {
		return st, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return st, fmt.Errorf("%s: %s", resp.Status, b)
	}
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// Rows are the report's figures, each next to its limit.
func (r ConnectReport) Rows() []Row {
	var rows []Row
	if r.Interrupted {
		rows = append(rows, row("INTERRUPTED", "figures up to Ctrl-C", ""))
	}
	rows = append(rows,
		judged("agents connected", fmt.Sprintf("%d / %d", r.Connected, r.Agents), "all", r.Connected >= int64(r.Agents)),
		judged("held after the hold", fmt.Sprint(r.HeldAfterHold), "all connected held", r.HeldAfterHold >= r.Connected))
	most := 0
	for _, n := range r.Nodes {
		most = max(most, n.Sessions)
	}
	if most > 0 {
		rows = append(rows, row("most held by one node", fmt.Sprint(most), fmt.Sprintf("%d per distribution-point push server, %d (connection gateway), %d (management server)", LimitPushServer, LimitConnGateway, LimitManagementServer)))
	}
	rows = append(rows,
		row("worker processes", fmt.Sprint(r.Procs), "20,000 open files per process on our machines"),
		row("time to connect all", fmt.Sprintf("%.1f s", r.Seconds), ""),
		row("connects per second", fmt.Sprintf("%.0f", r.Rate), ""),
		row("connect time p50 / p99 / max", fmt.Sprintf("%.1f / %.1f / %.0f ms", r.HandshakeP50, r.HandshakeP99, r.HandshakeMax), ""))
	for _, k := range slices.Sorted(maps.Keys(r.Failures)) {
		rows = append(rows, row("failed attempts: "+k, fmt.Sprint(r.Failures[k]), ""))
	}
	for _, n := range r.Nodes {
		rows = append(rows,
			row("node "+n.Admin+" sessions", fmt.Sprint(n.Sessions), ""),
			row("  RSS per connection", fmt.Sprintf("%.1f KiB", n.PerConnBytes/1024), ""),
			judged("  open files", fmt.Sprint(n.OpenFiles), "< 20,000 per process on our machines", n.OpenFiles < 20000))
	}
	return rows
}

// WriteTable prints the report with each figure next to its limit.
func (r ConnectReport) WriteTable(w io.Writer) { writeRows(w, r.Rows()) }

// HTML is the report for WriteHTML.
func (r ConnectReport) HTML(command string) HTMLReport {
	return HTMLReport{Title: fmt.Sprintf("dpload connect: %d agents to %d gateways", r.Agents, len(r.Servers)), Command: command, When: time.Now(),
		Rows: r.Rows(), Lines: connectionsLine(r.Timeline), Histograms: []Histogram{{"Connect time (TCP, TLS, HELLO/WELCOME)", r.Latency}}}
}

func sumOf(m map[string]int64) int64 {
	var n int64
	for _, v := range m {
		n += v
	}
	return n
}

func failureList(m map[string]int64) string {
	var parts []string
	for k, v := range m {
		parts = append(parts, fmt.Sprintf("%s %d", k, v))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

// credentialsHint says what to do about the usual reasons a gateway
// refuses every agent.
func credentialsHint(lastErr string) string {
	switch {
	case strings.Contains(lastErr, "certificate required"), strings.Contains(lastErr, "bad certificate"):
		return " (push.auth cert: the gateway wants agent certificates from its allow-list; give --agent-certs with --admin, or test with push.auth token and --token-key)"
	case strings.Contains(lastErr, "code 3"):
		return " (authentication: with push.auth token, give --token-key the gateway's push.token_key_file)"
	case strings.Contains(lastErr, "pin"):
		return " (check --pin against dpgate cert pin on the gateway's certificate)"
	}
	return ""
}
