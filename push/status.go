package push

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/dpgate/dpgate/link"
)

// QueuedDevices lists the devices with queued pushes.
func (s *Server) QueuedDevices() []string { return s.queue.Devices() }

// Holds reports whether the device is connected here.
func (s *Server) Holds(device string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sessions[device] != nil
}

// QueueDepth counts the pushes queued here and the devices they are for
// (a read of each such device's queue: for pages and status, not for a
// hot path).
func (s *Server) QueueDepth() (pushes, devices int) { return s.queue.Depth() }

// Disconnect ends the device's session here, as an operator does from the
// console; the agent reconnects after its backoff. It reports whether the
// device was connected here.
func (s *Server) Disconnect(device string) bool {
	s.mu.Lock()
	ss := s.sessions[device]
	s.mu.Unlock()
	if ss == nil {
		return false
	}
	ss.close()
	s.log.Info("push: session ended by the operator", "device", device)
	return true
}

// HeldDevices lists the devices connected here, each with the time its
// session began (what orders registrations between nodes).
func (s *Server) HeldDevices() map[string]time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]time.Time, len(s.sessions))
	for d, ss := range s.sessions {
		out[d] = ss.since
	}
	return out
}

// DeviceStatus is a device as GET /v1/devices shows it.
type DeviceStatus struct {
	ID         string     `json:"id"`
	Connected  bool       `json:"connected"`
	Transport  string     `json:"transport,omitempty"`
	RemoteAddr string     `json:"remote_addr,omitempty"`
	Since      *time.Time `json:"since,omitempty"`
	LastSeen   time.Time  `json:"last_seen,omitzero"` // absent for a device never seen
	Queued     int        `json:"queued"`
	// Corrupt counts this device's pushes that failed the store's
	// checksum: kept aside in the store, never delivered.
	Corrupt    int        `json:"corrupt_pushes,omitempty"`
	LocalAddr  string     `json:"local_addr,omitempty"`
	MAC        string     `json:"mac,omitempty"`
	ShutDownAt *time.Time `json:"shut_down_at,omitempty"` // the agent said it shuts down
	// Path is what the connection's transport knows of the agent's path
	// (TCP_INFO or QUIC ConnectionStats), read when asked.
	Path *link.PathStats `json:"path,omitempty"`
}

// Device returns one device's status.
func (s *Server) Device(id string) (DeviceStatus, bool) {
	rec, known := s.reg.Get(id)
	s.mu.Lock()
	ss := s.sessions[id]
	s.mu.Unlock()
	queued, corrupt := s.queue.Len(id)
	if !known && ss == nil && queued == 0 && corrupt == 0 {
		return DeviceStatus{}, false
	}
	st := DeviceStatus{ID: id, LastSeen: rec.LastSeen, Queued: queued, Corrupt: corrupt, RemoteAddr: rec.LastAddr, LocalAddr: rec.LocalAddr, MAC: rec.MAC, ShutDownAt: rec.ShutDownAt}
	if ss != nil {
		since := ss.since.UTC()
		st.Connected, st.Transport, st.RemoteAddr, st.Since = true, ss.transport, ss.remote.String(), &since
		st.LastSeen = time.Unix(0, ss.lastSeen.Load()).UTC()
		if p, ok := ss.path(); ok {
			st.Path = &p
		}
	}
	return st, true
}

// Devices returns the status of every device known here, by id: each
// that has connected, and each with pushes queued that never did (offline
// since before this gateway kept it, or a mistyped id), so that what
// waits for a device is never out of sight.
func (s *Server) Devices() []DeviceStatus {
	ids := append(s.reg.IDs(), s.QueuedDevices()...)
	slices.Sort(ids)
	var out []DeviceStatus
	for _, id := range slices.Compact(ids) {
		if d, ok := s.Device(id); ok {
			out = append(out, d)
		}
	}
	return out
}

// ErrConnected is returned by RemoveDevice for a device with a session.
var ErrConnected = errors.New("push: device is connected")

// RemoveDevice forgets a device and drops what is queued for it. A
// connected device is refused (ErrConnected): it would be known again at
// once.
func (s *Server) RemoveDevice(id string) (bool, error) {
	if s.Holds(id) {
		return false, fmt.Errorf("%w: %s", ErrConnected, id)
	}
	_, known := s.reg.Get(id)
	queued, _ := s.queue.Len(id)
	if !known && queued == 0 {
		return false, nil
	}
	if err := s.queue.Drop(id); err != nil {
		return true, err
	}
	return true, s.reg.Remove(id)
}

// Expired is the number of pushes expired undelivered since start.
func (s *Server) Expired() uint64 { return s.queue.Expired() }

// ShutDown records a device's shutdown notice: its connection ending now
// is expected.
func (s *Server) ShutDown(device string, at time.Time) error {
	s.m.shutdowns.Inc()
	return s.reg.ShutDown(device, at)
}

// KnownDevices returns the ids "push to all" reaches.
func (s *Server) KnownDevices() []string { return s.reg.IDs() }

// SessionsOpened counts the sessions started since the server was built.
func (s *Server) SessionsOpened() uint64 { return s.opened.Load() }

// Sessions is the number of connected agents.
func (s *Server) Sessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}
