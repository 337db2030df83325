package cluster

import (
	"encoding/json"
	"fmt"
)

// Meta is what a node tells the others about itself. Gossiped as JSON in
// memberlist's node metadata, which holds at most 512 bytes: the short
// field names keep a node with long host names well inside that.
type Meta struct {
	Version  string  `json:"v,omitempty"`
	Push     string  `json:"p,omitempty"` // push server host:port
	Proxy    string  `json:"x,omitempty"` // proxy listener host:port
	Admin    string  `json:"a,omitempty"` // admin API host:port
	Pin      string  `json:"t,omitempty"` // SPKI pin of the node's certificate, for node-to-node TLS
	Conns    int     `json:"c"`           // live agent connections (push sessions)
	Capacity int     `json:"k,omitempty"` // push.max_connections
	CPU      float64 `json:"l,omitempty"` // 1-minute load per core
	Uplink   string  `json:"u,omitempty"` // ok, degraded, out-of-limits (issue 7)
	Draining bool    `json:"d,omitempty"` // shutting down: send no agents
	// At is when these figures were taken (Unix ms), set by the cluster
	// as it gossips them: with the node's growth between two figures it
	// lets the others estimate its count now rather than as it was.
	At int64 `json:"at,omitempty"`
	// Boot is when the node's process started (Unix ns): a node that
	// comes back under its name with another Boot restarted (or was
	// upgraded) and knows none of the registrations it had.
	Boot int64 `json:"b,omitempty"`
}

func encodeMeta(m Meta) []byte {
	b, _ := json.Marshal(m)
	return b
}

func decodeMeta(b []byte) (Meta, error) {
	var m Meta
	if len(b) == 0 {
		return m, nil
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("cluster: metadata: %w", err)
	}
	return m, nil
}

// Spare is how many more agents the node can take.
func (m Meta) Spare() int { return max(0, m.Capacity-m.Conns) }
