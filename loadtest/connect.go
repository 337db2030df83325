package loadtest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
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
	// TokenKeyFile, when set, is push.token_key_file: the agents get device
	// tokens signed with its first key (push.auth token).
	TokenKeyFile string
	Self         string // the dpload binary
	Progress     Progress
}

// failFastAfter: with no agent connected and attempts failing this long,
// connect stops and says why, rather than retrying for minutes.
const failFastAfter = 10 * time.Second

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
	if cfg.TokenKeyFile != "" {
		agentArgs = append(agentArgs, "--token-key", cfg.TokenKeyFile)
	}
	fl, err := startFleets(ctx, cfg.Self, cfg.QUIC, cfg.Agents, cfg.Procs, agentArgs...)
	if err != nil {
		return rep, err
	}
	defer stopFleets(fl)
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
		if failed := sumOf(st.Failures); best == 0 && failed > 0 && time.Since(start) > failFastAfter {
			rep.Failures = st.Failures
			return rep, fmt.Errorf("no agent connected in %s, %d attempts failed (%s); the gateway's answer to the last one: %s%s",
				failFastAfter, failed, failureList(st.Failures), st.LastError, credentialsHint(st.LastError))
		}
		if st.Connected >= int64(cfg.Agents) || time.Now().After(deadline) || time.Since(bestAt) > time.Minute {
			rep.Connected = st.Connected
			break
		}
		select {
		case <-ctx.Done():
			return rep, ctx.Err()
		case <-tick.C:
		}
	}
	rep.Seconds = time.Since(start).Seconds()
	rep.Rate = float64(rep.Connected) / rep.Seconds
	progress("holding %d connections for %s", rep.Connected, cfg.Hold)
	select {
	case <-ctx.Done():
		return rep, ctx.Err()
	case <-time.After(cfg.Hold):
	}
	st, err := fl.status()
	if err != nil {
		return rep, err
	}
	rep.HeldAfterHold = st.Connected
	rep.Failures = st.Failures
	h, err := fl.hist(string(KindConnect))
	if err != nil {
		return rep, err
	}
	rep.HandshakeP50, rep.HandshakeP99, rep.HandshakeMax = ms(h.ValueAtQuantile(50)), ms(h.ValueAtQuantile(99)), ms(h.Max())
	rep.Latency = Bars(h, 40)
	for i := range rep.Nodes {
		st, err := nodeStatus(ctx, rep.Nodes[i].Admin, cfg.Token)
		if err != nil {
			return rep, err
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
	return rep, nil
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
	rows := []Row{
		{"agents connected", fmt.Sprintf("%d / %d", r.Connected, r.Agents), ""},
		{"held after the hold", fmt.Sprint(r.HeldAfterHold), fmt.Sprintf("%d (push server), %d (connection gateway), %d (management server)", LimitPushServer, LimitConnGateway, LimitManagementServer)},
	}
	most := 0
	for _, n := range r.Nodes {
		most = max(most, n.Sessions)
	}
	if most > 0 {
		rows = append(rows, Row{"most held by one node", fmt.Sprint(most), fmt.Sprintf("%d per distribution-point push server", LimitPushServer)})
	}
	rows = append(rows,
		Row{"worker processes", fmt.Sprint(r.Procs), "20,000 open files per process on our machines"},
		Row{"time to connect all", fmt.Sprintf("%.1f s", r.Seconds), ""},
		Row{"connects per second", fmt.Sprintf("%.0f", r.Rate), ""},
		Row{"connect time p50 / p99 / max", fmt.Sprintf("%.1f / %.1f / %.0f ms", r.HandshakeP50, r.HandshakeP99, r.HandshakeMax), ""})
	for k, v := range r.Failures {
		rows = append(rows, Row{"failed attempts: " + k, fmt.Sprint(v), ""})
	}
	for _, n := range r.Nodes {
		rows = append(rows,
			Row{"node " + n.Admin + " sessions", fmt.Sprint(n.Sessions), ""},
			Row{"  RSS per connection", fmt.Sprintf("%.1f KiB", n.PerConnBytes/1024), ""},
			Row{"  open files", fmt.Sprint(n.OpenFiles), "20,000 per process on our machines"})
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
		return " (push.auth cert: the gateway wants agent certificates from its allow-list; test with push.auth token and --token-key, or none on loopback)"
	case strings.Contains(lastErr, "code 3"):
		return " (authentication: with push.auth token, give --token-key the gateway's push.token_key_file)"
	case strings.Contains(lastErr, "pin"):
		return " (check --pin against dpgate cert pin on the gateway's certificate)"
	}
	return ""
}
