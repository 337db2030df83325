package push

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/dpgate/dpgate/push/queue"
	"github.com/dpgate/dpgate/push/wire"
)

// ErrPayloadTooLarge is returned by Push for an oversized payload.
var ErrPayloadTooLarge = errors.New("push: payload too large")

// Push queues one payload for one device (committed before it returns)
// and starts delivery if the device is connected here.
func (s *Server) Push(device string, payload []byte, ttl time.Duration) (wire.Message, error) {
	msgs, err := s.PushEach([]string{device}, [][]byte{payload}, ttl)
	if err != nil {
		return wire.Message{}, err
	}
	return msgs[0], nil
}

// PushEach queues payloads[i] for devices[i], all in one transaction (a
// management server's batch: one commit and one request for many
// pushes).
func (s *Server) PushEach(devices []string, payloads [][]byte, ttl time.Duration) ([]wire.Message, error) {
	if len(payloads) != len(devices) {
		return nil, fmt.Errorf("push: %d payloads for %d devices", len(payloads), len(devices))
	}
	for i, d := range devices {
		if err := s.Check([]string{d}, payloads[i]); err != nil {
			return nil, err
		}
	}
	start := time.Now()
	defer func() { s.m.publish.Observe(time.Since(start).Seconds()) }()
	msgs, err := s.queue.Enqueue(devices, payloads, ttl)
	if err != nil {
		return nil, err
	}
	s.m.accepted.Add(float64(len(msgs)))
	s.mu.Lock()
	var ds []delivery
	for i, d := range devices {
		if ss := s.sessions[d]; ss != nil {
			ds = append(ds, delivery{ss, msgs[i]})
		}
	}
	s.mu.Unlock()
	deliver(ds)
	return msgs, nil
}

// delivery is a push just committed for a device connected here.
type delivery struct {
	ss *session
	m  wire.Message
}

// writeAbove is how many deliveries at most the caller writes itself.
// A push to more devices (a push to all) starts a flusher goroutine for
// each session instead, as before: measured, one goroutine writing to
// 15,000 agents, or one a core, brought the last agent its push later
// (docs/BENCHMARKS.md, "Push: the caller writes the push").
const writeAbove = 64

// deliver hands each push to its session (session.kickWith).
func deliver(ds []delivery) {
	here := len(ds) <= writeAbove
	for _, d := range ds {
		d.ss.kickWith(d.m, here)
	}
}

// Check refuses an oversized payload (ErrPayloadTooLarge) and device ids
// the protocol cannot carry.
func (s *Server) Check(devices []string, payload []byte) error {
	if len(payload) > s.cfg.MaxPayload {
		return fmt.Errorf("%w: %d bytes, the limit is %d", ErrPayloadTooLarge, len(payload), s.cfg.MaxPayload)
	}
	for _, d := range devices {
		if err := wire.CheckDeviceID(d); err != nil {
			return fmt.Errorf("%w: %v", ErrBadDevice, err)
		}
	}
	return nil
}

// ErrBadDevice is returned for a device id the protocol cannot carry.
var ErrBadDevice = errors.New("push: bad device id")

// acked removes an acknowledged push and wakes the WaitID callers of its id.
func (s *Server) acked(device string, seq uint64) {
	id, found, err := s.queue.Ack(device, seq)
	if err != nil {
		s.log.Error("push: ack", "device", device, "seq", seq, "err", err)
		return
	}
	if found {
		s.delivered.Add(1)
		s.ackedIDs([][16]byte{id})
		s.cluster.Acked(device, id)
	}
}

// ackedIDs records ids as acknowledged and wakes their WaitID callers.
func (s *Server) ackedIDs(ids [][16]byte) {
	s.ackMu.Lock()
	var chans []chan struct{}
	for _, id := range ids {
		s.recent.Add(id)
		chans = append(chans, s.idWaiters[id]...)
		delete(s.idWaiters, id)
	}
	s.ackMu.Unlock()
	for _, ch := range chans {
		close(ch)
	}
}

// WaitID waits until the push with this id is acknowledged here or
// reported acknowledged by another node of the cluster (Remove with
// acked), or ctx ends.
func (s *Server) WaitID(ctx context.Context, id [16]byte) error {
	ch := make(chan struct{})
	s.ackMu.Lock()
	if s.recent.Has(id) {
		s.ackMu.Unlock()
		return nil
	}
	s.idWaiters[id] = append(s.idWaiters[id], ch)
	s.ackMu.Unlock()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		s.ackMu.Lock()
		list := slices.DeleteFunc(s.idWaiters[id], func(c chan struct{}) bool { return c == ch })
		if len(list) == 0 {
			delete(s.idWaiters, id)
		} else {
			s.idWaiters[id] = list
		}
		s.ackMu.Unlock()
		return ctx.Err()
	}
}

// Insert commits copies of pushes accepted on another node of the cluster
// (skipping ids already queued or acknowledged lately) and starts their
// delivery to devices connected here. It returns the items added.
func (s *Server) Insert(items []queue.Item) ([]queue.Item, error) {
	s.ackMu.Lock()
	fresh := slices.DeleteFunc(slices.Clone(items), func(it queue.Item) bool { return s.recent.Has(it.ID) })
	s.ackMu.Unlock()
	if len(fresh) == 0 {
		return nil, nil
	}
	added, err := s.queue.Insert(fresh)
	if err != nil {
		return nil, err
	}
	// An ACK may have been recorded while the copy was being committed
	// (Remove records before it removes, so one of the two sees the
	// other): take those out again.
	s.ackMu.Lock()
	late := map[string][][16]byte{}
	added = slices.DeleteFunc(added, func(it queue.Item) bool {
		done := s.recent.Has(it.ID)
		if done {
			late[it.Device] = append(late[it.Device], it.ID)
		}
		return done
	})
	s.ackMu.Unlock()
	for dev, ids := range late {
		if err := s.queue.Remove(dev, ids); err != nil {
			return added, err
		}
	}
	s.m.copiesStored.Add(float64(len(added)))
	s.mu.Lock()
	var ds []delivery
	for _, it := range added {
		if ss := s.sessions[it.Device]; ss != nil {
			ds = append(ds, delivery{ss, it.Message})
		}
	}
	s.mu.Unlock()
	deliver(ds)
	return added, nil
}

// Remove deletes a device's copies by id: acknowledged on another node
// (acked: recorded so a late copy is not delivered again, and WaitID
// callers woken), or handed over to the nodes that keep them now.
func (s *Server) Remove(device string, ids [][16]byte, acked bool) error {
	if acked { // first, so an Insert committing these ids now drops them after
		s.ackedIDs(ids)
	}
	return s.queue.Remove(device, ids)
}

// Pending returns what is queued for a device, oldest first (at most
// 10,000 messages).
func (s *Server) Pending(device string) ([]wire.Message, error) {
	return s.queue.Pending(device, 0, 10000)
}

// Wake sends a WAKE frame to the device when it is connected here and
// handles them (HELLO capability bit 0), and reports whether it did.
func (s *Server) Wake(device string) bool {
	s.mu.Lock()
	ss := s.sessions[device]
	s.mu.Unlock()
	if ss == nil || ss.caps&wire.CapWake == 0 {
		return false
	}
	return ss.send([]byte{wire.TypeWake, 0, 0, 0}) == nil
}

// Move sends REDIRECT (reason 2, balancing) to one session per address
// given, each told to reconnect there, and returns how many it sent. The
// agents close; a session still open after 10 s is closed here.
func (s *Server) Move(addrs []string) int {
	s.mu.Lock()
	list := make([]*session, 0, len(addrs))
	for _, ss := range s.sessions { // map order: an arbitrary choice
		if len(list) == len(addrs) {
			break
		}
		list = append(list, ss)
	}
	s.mu.Unlock()
	for i, ss := range list {
		ss.send((&wire.Redirect{Reason: 2, Address: addrs[i]}).Marshal())
		time.AfterFunc(10*time.Second, ss.close)
	}
	s.m.moved.Add(float64(len(list)))
	return len(list)
}
