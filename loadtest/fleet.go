package loadtest

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"github.com/dpgate/dpgate/push"
	"github.com/dpgate/dpgate/push/client"
	"github.com/dpgate/dpgate/tlsconf"
)

// Push payloads of the load scenarios: a kind byte, then the publisher's
// clock in Unix nanoseconds, so the receiving agent computes the
// publish-to-receive latency (both run on the same machine).
const (
	KindLatency   = 'L'
	KindBroadcast = 'B'
	KindStorm     = 'S'
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
	Server    string
	Pin       string
	QUIC      bool
	Prefix    string   // device ids are Prefix + index
	First     int      // first index
	Count     int      // number of agents
	SourceIPs []net.IP // spread over these local addresses, round robin
	// Ramp is the connection rate per second while starting. Default 1000.
	Ramp float64
}

// Fleet is many agents in one process, counting what they receive.
type Fleet struct {
	clients   []*client.Client
	connected atomic.Int64
	received  [256]atomic.Int64

	mu   sync.Mutex
	hist map[byte]*hdrhistogram.Histogram // latency in microseconds, per kind
	wg   sync.WaitGroup
}

// StartFleet starts the agents (paced by Ramp); they run until ctx ends.
func StartFleet(ctx context.Context, cfg FleetConfig) (*Fleet, error) {
	pins, err := tlsconf.ParsePins([]string{cfg.Pin})
	if err != nil {
		return nil, err
	}
	if cfg.Ramp == 0 {
		cfg.Ramp = 1000
	}
	f := &Fleet{hist: map[byte]*hdrhistogram.Histogram{}}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	for i := range cfg.Count {
		var src net.IP
		if len(cfg.SourceIPs) > 0 {
			src = cfg.SourceIPs[i%len(cfg.SourceIPs)]
		}
		c, err := client.New(client.Config{
			Servers:  []string{cfg.Server},
			DeviceID: fmt.Sprintf("%s%d", cfg.Prefix, cfg.First+i),
			TLS:      tlsconf.PinnedClientConfig(pins, "dpgate"),
			QUIC:     cfg.QUIC,
			SourceIP: src,
			OnPush:   f.onPush,
			OnEvent:  f.onEvent,
			Logger:   quiet,
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
		for _, c := range f.clients {
			if ctx.Err() != nil {
				return
			}
			if d := time.Until(next); d > 0 {
				time.Sleep(d)
			}
			next = next.Add(tick)
			f.wg.Add(1)
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
	}
}

func (f *Fleet) onPush(m push.Message) {
	if len(m.Payload) < 9 {
		return
	}
	kind := m.Payload[0]
	sent := int64(binary.BigEndian.Uint64(m.Payload[1:9]))
	lat := time.Now().UnixNano() - sent
	f.received[kind].Add(1)
	f.mu.Lock()
	h := f.hist[kind]
	if h == nil {
		h = hdrhistogram.New(1, 120_000_000, 3) // 1 us .. 2 min
		f.hist[kind] = h
	}
	h.RecordValue(max(1, lat/1000))
	f.mu.Unlock()
}

// FleetStatus is a fleet's answer to "status".
type FleetStatus struct {
	Connected int64            `json:"connected"`
	Received  map[string]int64 `json:"received"`
}

// Status counts connected agents and received pushes by kind.
func (f *Fleet) Status() FleetStatus {
	st := FleetStatus{Connected: f.connected.Load(), Received: map[string]int64{}}
	for _, k := range []byte{KindLatency, KindBroadcast, KindStorm} {
		st.Received[string(k)] = f.received[k].Load()
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
