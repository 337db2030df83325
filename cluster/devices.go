package cluster

import (
	"context"
	"net/http"
	"slices"
)

// A push to all, accepted by any node, is for every device the cluster
// knows: each node knows the devices that were connected to it, so the
// accepting node asks the others for theirs.

// DevicesElsewhere lists the devices the other push nodes know, and the
// nodes that did not answer (a push to all misses the devices only they
// know).
func (r *Router) DevicesElsewhere(ctx context.Context) (devices, notReached []string) {
	for _, m := range r.nodes() {
		if m.Name == r.self {
			continue
		}
		var out devicesReply
		if err := r.peer.post(ctx, m.Name, "/v1/peer/devices", struct{}{}, &out); err != nil {
			r.log.Warn("cluster: asking another node for its devices", "node", m.Name, "err", err)
			notReached = append(notReached, m.Name)
			continue
		}
		devices = append(devices, out.Devices...)
	}
	slices.Sort(devices)
	return slices.Compact(devices), notReached
}

type devicesReply struct {
	Devices []string `json:"devices"`
}

func (pn *peerNet) handleDevices(w http.ResponseWriter, req *http.Request) {
	var body struct{}
	if _, ok := pn.request(w, req, 1<<10, &body); !ok {
		return
	}
	writeJSON(w, devicesReply{Devices: pn.r.local.KnownDevices()})
}
