package gateway

import (
	"cmp"
	"context"
	"encoding/json"
	"maps"
	"slices"

	"github.com/dpgate/dpgate/push"
)

// In a cluster each node knows the devices that were connected to it and
// those whose queues it keeps; the device list and a push to all are for
// the cluster's devices, gathered from every node (cluster.Router.AskAll).

// Names of the questions nodes answer each other (cluster.RouterConfig.Queries).
const (
	queryKnownDevices = "known-devices" // []string: what a push to all reaches
	queryDevices      = "devices"       // []push.DeviceStatus
)

// clusterQueries are what this node answers other nodes.
func (g *Gateway) clusterQueries() map[string]func() any {
	return map[string]func() any{
		queryKnownDevices: func() any { return g.push.KnownDevices() },
		queryDevices:      func() any { return g.push.Devices() },
	}
}

// allDevices are the devices a push to all is for: those this node
// knows and, in a cluster, those every other node knows; the nodes that
// did not answer are notReached.
func (g *Gateway) allDevices(ctx context.Context) (devices, notReached []string) {
	devices = g.push.KnownDevices()
	if g.router == nil {
		return devices, nil
	}
	answers, notReached := askAll[[]string](ctx, g, queryKnownDevices)
	for _, ids := range answers {
		devices = append(devices, ids...)
	}
	slices.Sort(devices)
	return slices.Compact(devices), notReached
}

// askAll asks every other node the query and decodes the answers; an
// answer that does not decode counts as not reached.
func askAll[T any](ctx context.Context, g *Gateway, query string) (map[string]T, []string) {
	raw, notReached := g.router.AskAll(ctx, query)
	answers := make(map[string]T, len(raw))
	for node, a := range raw {
		var v T
		if err := json.Unmarshal(a, &v); err != nil {
			g.log.Warn("cluster: another node's answer does not decode", "query", query, "node", node, "err", err)
			notReached = append(notReached, node)
			continue
		}
		answers[node] = v
	}
	return answers, notReached
}

// DeviceEntry is a device in GET /v1/devices: its status and, in a
// cluster, the node it is connected to or was last seen at.
type DeviceEntry struct {
	push.DeviceStatus
	Node string `json:"node,omitempty"`
}

// DeviceList is the reply of GET /v1/devices.
type DeviceList struct {
	Count   int           `json:"count"`
	Devices []DeviceEntry `json:"devices"`
	// NotReached: in a cluster, the nodes that did not answer; the
	// devices only they know are missing.
	NotReached []string `json:"not_reached,omitempty"`
}

// deviceList lists the devices this node knows and, in a cluster, those
// of every other node, one entry a device with its node (none without a
// cluster).
func (g *Gateway) deviceList(ctx context.Context) DeviceList {
	if g.router == nil {
		l := DeviceList{Devices: mergeDevices(map[string][]push.DeviceStatus{"": g.push.Devices()})}
		l.Count = len(l.Devices)
		return l
	}
	byNode, notReached := askAll[[]push.DeviceStatus](ctx, g, queryDevices)
	byNode[g.cfg.Node.Name] = g.push.Devices()
	l := DeviceList{Devices: mergeDevices(byNode), NotReached: notReached}
	l.Count = len(l.Devices)
	return l
}

// mergeDevices makes one entry a device of what each node says of it:
// the connected node's view (else the one that saw it last), and the
// longest queue (the owners keep copies of the same pushes).
func mergeDevices(byNode map[string][]push.DeviceStatus) []DeviceEntry {
	nodes := slices.Sorted(maps.Keys(byNode))
	at := map[string]int{}
	var out []DeviceEntry
	for _, node := range nodes {
		for _, d := range byNode[node] {
			i, ok := at[d.ID]
			if !ok {
				at[d.ID] = len(out)
				e := DeviceEntry{DeviceStatus: d}
				if d.Connected || !d.LastSeen.IsZero() {
					e.Node = node
				}
				out = append(out, e)
				continue
			}
			e := &out[i]
			queued, corrupt := max(e.Queued, d.Queued), max(e.Corrupt, d.Corrupt)
			if d.Connected && !e.Connected || !e.Connected && !d.Connected && d.LastSeen.After(e.LastSeen) {
				e.DeviceStatus, e.Node = d, node
			}
			e.Queued, e.Corrupt = queued, corrupt
		}
	}
	slices.SortFunc(out, func(a, b DeviceEntry) int { return cmp.Compare(a.ID, b.ID) })
	return out
}
