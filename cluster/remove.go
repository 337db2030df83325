package cluster

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
)

// A device is removed on every node, not only the one an operator asks:
// its owners keep copies of its queue, and a node it was once connected
// to keeps it among its known devices (a push to all from there would
// queue for it again).

// ConnectedError: a removal was refused because the device is connected
// to Node (its agent would say HELLO again at once).
type ConnectedError struct{ Node string }

func (e *ConnectedError) Error() string {
	return fmt.Sprintf("device is connected to %s; stop its agent first", e.Node)
}

// Removed is what the other nodes did with a removal.
type Removed struct {
	Nodes      []string // the nodes that knew the device and forgot it
	NotReached []string // nodes that did not answer or are down: they may still know it
}

// RemoveElsewhere has every other push node forget device and drop its
// queue, the owners first: they know where the device is connected, so a
// connected device is refused (a *ConnectedError) before any node has
// dropped anything. The caller removes its own copy after this.
func (r *Router) RemoveElsewhere(ctx context.Context, device string) (Removed, error) {
	if h := r.Holder(device); h != "" && h != r.self {
		return Removed{}, &ConnectedError{Node: h}
	}
	nodes := r.nodes()
	ask := r.owners(device, nodes)
	for _, m := range nodes {
		if !slices.Contains(ask, m.Name) {
			ask = append(ask, m.Name)
		}
	}
	out := Removed{NotReached: r.failedPushNodes()} // they may know it
	for _, node := range ask {
		if node == r.self {
			continue
		}
		found, err := r.peer.remove(ctx, node, device)
		var ce *ConnectedError
		switch {
		case errors.As(err, &ce):
			return out, err
		case err != nil:
			r.log.Warn("cluster: removing a device on another node", "device", device, "node", node, "err", err)
			out.NotReached = append(out.NotReached, node)
		case found:
			out.Nodes = append(out.Nodes, node)
		}
	}
	return out, nil
}

// removeHere answers a peer's removal: refused when the device is
// connected here or, as far as this node knows, elsewhere.
func (r *Router) removeHere(device string) (bool, error) {
	if h := r.Holder(device); h != "" && h != r.self {
		return false, &ConnectedError{Node: h}
	}
	if r.local.Holds(device) {
		return false, &ConnectedError{Node: r.self}
	}
	found, err := r.local.RemoveDevice(device)
	if err == nil && found {
		r.log.Info("device removed with its queue, as another node asked", "device", device)
	}
	return found, err
}

type removeBody struct {
	Device string `json:"device"`
}

type removeReply struct {
	Found bool `json:"found"`
}

func (pn *peerNet) handleRemove(w http.ResponseWriter, req *http.Request) {
	var body removeBody
	if _, ok := pn.request(w, req, 64<<10, &body); !ok {
		return
	}
	if body.Device == "" {
		http.Error(w, "a device id is required", http.StatusBadRequest)
		return
	}
	found, err := pn.r.removeHere(body.Device)
	var ce *ConnectedError
	switch {
	case errors.As(err, &ce):
		http.Error(w, ce.Node, http.StatusConflict)
		return
	case err != nil:
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	writeJSON(w, removeReply{Found: found})
}

// remove asks node to forget device; a *ConnectedError when the device
// is connected (there, or where that node knows).
func (pn *peerNet) remove(ctx context.Context, node, device string) (bool, error) {
	var out removeReply
	err := pn.post(ctx, node, "/v1/peer/remove", removeBody{Device: device}, &out)
	if he := (*peerStatusError)(nil); errors.As(err, &he) && he.status == http.StatusConflict {
		return false, &ConnectedError{Node: he.msg}
	}
	return out.Found, err
}
