package loadtest

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"github.com/dpgate/dpgate/push/client"
	"github.com/dpgate/dpgate/push/wire"
	"github.com/dpgate/dpgate/tlsconf"
)

// Push payloads of the load scenarios: a kind byte, then the publisher's
// clock in Unix nanoseconds, so the receiving agent computes the
// publish-to-receive latency (both run on the same machine).
const (
	KindLatency   = 'L'
	KindBroadcast = 'B'
	KindStorm     = 'S'
	// KindConnect is not a push: the histogram of the time from an
	// agent's start to its first session (TCP, TLS, HELLO, WELCOME).
	KindConnect = 'C'
)

// StampedPayload builds a scenario payload sent now.
func StampedPayload(kind byte) []byte {
	b := make([]byte, 9)
	b[0] = kind
	binary.BigEndian.PutUint64(b[1:], uint64(time.Now().UnixNano()))
	return b
}

// FleetConfig describes the agents one dpload agents process runs.
type FleetConfig struct {
	Server    string // push address; several, comma-separated: agent i starts at the i-th
	Pin       string // the gateways' pins, comma-separated
	QUIC      bool
	Prefix    string   // device ids are Prefix + index
	First     int      // first index
	Count     int      // number of agents
	SourceIPs []net.IP // spread over these local addresses, round robin
	// Ramp is the connection rate per second while starting. Default 1000.
	Ramp float64
	// TokenKey, when set, signs each agent a device token (push.auth
	// token; the first key of push.token_key_file), valid for a day.
	TokenKey []byte
	// Certs, when set, are client certificates by agent index
	// (LoadAgentCerts): agent First+i presents Certs[First+i].
	Certs []tls.Certificate
}

// Fleet is many agents in one process, counting what they receive.
type Fleet struct {
	clients   []*client.Client
	connected atomic.Int64
	received  [256]atomic.Int64
	failures  sync.Map // reason -> *atomic.Int64
	lastErr   atomic.Pointer[string]

	mu   sync.Mutex
	hist map[byte]*hdrhistogram.Histogram // latency in microseconds, per kind
	wg   sync.WaitGroup
}

// StartFleet starts the agents (paced by Ramp); they run until ctx ends.
func StartFleet(ctx context.Context, cfg FleetConfig) (*Fleet, error) {
	pins, err := tlsconf.ParsePins(strings.Split(cfg.Pin, ","))
	if err != nil {
		return nil, err
	}
	if cfg.Ramp == 0 {
		cfg.Ramp = 1000
	}
	if cfg.Certs != nil && len(cfg.Certs) < cfg.First+cfg.Count {
		return nil, fmt.Errorf("loadtest: %d agent certificates for agents up to %d", len(cfg.Certs), cfg.First+cfg.Count-1)
	}
	f := &Fleet{hist: map[byte]*hdrhistogram.Histogram{}}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	starts := make([]*atomic.Int64, cfg.Count) // unix ns when each Run began; 0 once connected
	for i := range cfg.Count {
		var src net.IP
		if len(cfg.SourceIPs) > 0 {
			src = cfg.SourceIPs[i%len(cfg.SourceIPs)]
		}
		started := new(atomic.Int64)
		starts[i] = started
		servers := strings.Split(cfg.Server, ",")
		k := i % len(servers)
		id := fmt.Sprintf("%s%d", cfg.Prefix, cfg.First+i)
		var token string
		if cfg.TokenKey != nil {
			token = wire.IssueToken(cfg.TokenKey, id, time.Now().Add(24*time.Hour))
		}
		tlsCfg := tlsconf.PinnedClientConfig(pins, "dpgate")
		if cfg.Certs != nil {
			tlsCfg.Certificates = cfg.Certs[cfg.First+i : cfg.First+i+1]
		}
		c, err := client.New(client.Config{
			Servers:  append(servers[k:len(servers):len(servers)], servers[:k]...),
			DeviceID: id,
			Token:    token,
			TLS:      tlsCfg,
			QUIC:     cfg.QUIC,
			SourceIP: src,
			OnPush:   f.onPush,
			OnEvent: func(e client.Event) {
				if e.Kind == "connected" {
					if t0 := started.Swap(0); t0 != 0 {
						f.record(KindConnect, time.Now().UnixNano()-t0)
					}
				}
				f.onEvent(e)
			},
			Logger: quiet,
		})
		if err != nil {
			return nil, err
		}
		f.clients = append(f.clients, c)
	}
	f.wg.Add(1)
	go func() { // starts the agents at the ramp rate; each runs until ctx ends
		defer f.wg.Done()
		tick := time.Duration(float64(time.Second) / cfg.Ramp)
		next := time.Now()
		for i, c := range f.clients {
			if ctx.Err() != nil {
				return
			}
			if d := time.Until(next); d > 0 {
				time.Sleep(d)
			}
			next = next.Add(tick)
			f.wg.Add(1)
			starts[i].Store(time.Now().UnixNano())
			go func() { defer f.wg.Done(); c.Run(ctx) }()
		}
	}()
	return f, nil
}

func (f *Fleet) onEvent(e client.Event) {
	switch e.Kind {
	case "connected":
		f.connected.Add(1)
	case "disconnected", "drain":
		f.connected.Add(-1)
	case "error":
		v, _ := f.failures.LoadOrStore(failureReason(e.Err), new(atomic.Int64))
		v.(*atomic.Int64).Add(1)
		if e.Err != nil {
			msg := e.Err.Error()
			f.lastErr.Store(&msg)
		}
	}
}

// failureReason sorts a failed connection attempt for the report.
func failureReason(err error) string {
	s := ""
	if err != nil {
		s = err.Error()
	}
	switch {
	case strings.Contains(s, "connection refused"):
		return "refused"
	case strings.Contains(s, "timeout"), strings.Contains(s, "deadline"):
		return "timeout"
	case strings.Contains(s, "reset by peer"), strings.Contains(s, "EOF"), strings.Contains(s, "broken pipe"):
		return "reset"
	case strings.Contains(s, "tls:"), strings.Contains(s, "certificate"), strings.Contains(s, "pin"):
		return "tls"
	case strings.Contains(s, "server refused the session"):
		return "refused_by_gateway"
	case strings.Contains(s, "cannot assign requested address"), strings.Contains(s, "too many open files"):
		return "local_resources"
	}
	return "other"
}

// record adds one latency (ns) to the kind's histogram.
func (f *Fleet) record(kind byte, ns int64) {
	f.mu.Lock()
	h := f.hist[kind]
	if h == nil {
		h = hdrhistogram.New(1, 120_000_000, 3) // 1 us .. 2 min
		f.hist[kind] = h
	}
	h.RecordValue(max(1, ns/1000))
	f.mu.Unlock()
}

func (f *Fleet) onPush(m wire.Message) {
	if len(m.Payload) < 9 {
		return
	}
	kind := m.Payload[0]
	sent := int64(binary.BigEndian.Uint64(m.Payload[1:9]))
	f.received[kind].Add(1)
	f.record(kind, time.Now().UnixNano()-sent)
}

// FleetStatus is a fleet's answer to "status".
type FleetStatus struct {
	Connected int64            `json:"connected"`
	Received  map[string]int64 `json:"received"`
	Failures  map[string]int64 `json:"failures,omitempty"`   // failed connection attempts by reason
	LastError string           `json:"last_error,omitempty"` // the latest failed attempt's error, as the client saw it
}

// Status counts connected agents and received pushes by kind.
func (f *Fleet) Status() FleetStatus {
	st := FleetStatus{Connected: f.connected.Load(), Received: map[string]int64{}, Failures: map[string]int64{}}
	for _, k := range []byte{KindLatency, KindBroadcast, KindStorm} {
		st.Received[string(k)] = f.received[k].Load()
	}
	f.failures.Range(func(k, v any) bool {
		st.Failures[k.(string)] = v.(*atomic.Int64).Load()
		return true
	})
	if e := f.lastErr.Load(); e != nil {
		st.LastError = *e
	}
	return st
}

// Histograms exports the latency histograms by kind.
func (f *Fleet) Histograms() map[string]*hdrhistogram.Snapshot {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]*hdrhistogram.Snapshot{}
	for k, h := range f.hist {
		out[string(k)] = h.Export()
	}
	return out
}

// Storm drops every agent's connection at once; each reconnects after
// its usual jittered backoff.
func (f *Fleet) Storm() {
	for _, c := range f.clients {
		c.Reconnect()
	}
}

// Serve answers the orchestrator's commands, one per line on r, with one
// JSON line each on w: status, hist, storm, quit. It returns on quit or
// at the end of r.
func (f *Fleet) Serve(r io.Reader, w io.Writer) {
	sc := bufio.NewScanner(r)
	enc := json.NewEncoder(w)
	for sc.Scan() {
		switch sc.Text() {
		case "status":
			enc.Encode(f.Status())
		case "hist":
			enc.Encode(f.Histograms())
		case "storm":
			f.Storm()
			enc.Encode(map[string]bool{"ok": true})
		case "quit":
			return
		default:
			enc.Encode(map[string]string{"error": "unknown command " + sc.Text()})
		}
	}
}
