package cluster

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"time"
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
	ids := r.pendingIDs(device)
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
		found, err := r.peer.remove(ctx, node, device, ids)
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
	r.markGone(ids) // the caller drops its queue after this
	return out, nil
}

// removeHere answers a peer's removal: refused when the device is
// connected here or, as far as this node knows, elsewhere. ids are the
// pushes the asking node held for it.
func (r *Router) removeHere(device string, ids [][16]byte) (bool, error) {
	if h := r.Holder(device); h != "" && h != r.self {
		return false, &ConnectedError{Node: h}
	}
	if r.local.Holds(device) {
		return false, &ConnectedError{Node: r.self}
	}
	r.markGone(append(ids, r.pendingIDs(device)...))
	found, err := r.local.RemoveDevice(device)
	if err == nil && found {
		r.log.Info("device removed with its queue, as another node asked", "device", device)
	}
	return found, err
}

type removeBody struct {
	Device string  `json:"device"`
	IDs    []hexID `json:"ids,omitempty"` // the asking node's pushes for it (nodes before it send none)
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
	ids := make([][16]byte, len(body.IDs))
	for i, id := range body.IDs {
		ids[i] = [16]byte(id)
	}
	found, err := pn.r.removeHere(body.Device, ids)
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
func (pn *peerNet) remove(ctx context.Context, node, device string, ids [][16]byte) (bool, error) {
	var out removeReply
	body := removeBody{Device: device, IDs: make([]hexID, len(ids))}
	for i, id := range ids {
		body.IDs[i] = hexID(id)
	}
	err := pn.post(ctx, node, "/v1/peer/remove", body, &out)
	if he := (*peerStatusError)(nil); errors.As(err, &he) && he.status == http.StatusConflict {
		return false, &ConnectedError{Node: he.msg}
	}
	return out.Found, err
}

// goneKept is how long the pushes of a removed device are remembered
// (Router.gone): longer than a copy already on its way takes to arrive
// (an outbox's retries, a rebalance that began before the removal).
const goneKept = 10 * time.Minute

// maxGone bounds Router.gone; past it the oldest are dropped first.
const maxGone = 1 << 18

// pendingIDs are the ids of the pushes queued here for device.
func (r *Router) pendingIDs(device string) [][16]byte {
	ms, _ := r.local.Pending(device) // none read: none to remember
	ids := make([][16]byte, len(ms))
	for i, m := range ms {
		ids[i] = m.ID
	}
	return ids
}

// markGone records the pushes ids as dropped with their device, once
// its removal goes ahead: a copy of one that arrives later (stored) is
// not taken, so the device does not come back with it. Seen under load:
// a removal answered from every node, and one owner listed the device
// again with its 3 pushes, a copy still on its way from a rebalance.
func (r *Router) markGone(ids [][16]byte) {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.dropGone(now, max(maxGone-len(ids), maxGone/2))
	for _, id := range ids {
		r.gone[id] = now
	}
}

// dropGone forgets the pushes removed more than goneKept ago, and then,
// oldest first, down to about keep (removals are rare: each walks the
// map). r.mu is held.
func (r *Router) dropGone(now time.Time, keep int) {
	for id, at := range r.gone {
		if now.Sub(at) > goneKept {
			delete(r.gone, id)
		}
	}
	if len(r.gone) <= keep {
		return
	}
	ats := slices.SortedFunc(maps.Values(r.gone), time.Time.Compare)
	cut := ats[len(ats)-keep]
	for id, at := range r.gone {
		if at.Before(cut) {
			delete(r.gone, id)
		}
	}
}
