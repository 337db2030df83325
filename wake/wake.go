package wake

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
)

// Target is what the gateway knows of a device for waking it.
type Target struct {
	Addr netip.Addr       // its address in the LAN (as reported, else as seen)
	MAC  net.HardwareAddr // for Wake-on-LAN; nil when unknown
}

// Defaults and names internal/config uses for the wake.* keys.
const (
	// DefaultAgentPort is the agents' wake-up UDP port (seeds/004).
	DefaultAgentPort = 15000
	// Signature names: how wake-ups to agents are signed.
	SignatureEd25519 = "ed25519" // the gateway's wake key; agents get its public half
	SignatureHMAC    = "hmac"    // each device's secret
)

// DefaultWOLPorts are the Wake-on-LAN UDP ports: echo and discard.
func DefaultWOLPorts() []int { return []int{7, 9} }

// Config configures a Service. Zero values mean the defaults in comments.
type Config struct {
	Keys *Keys // required
	// Lookup finds a device's address and MAC. Required.
	Lookup func(device string) (Target, bool)
	// PushWake sends a WAKE frame on the device's push connection and
	// names the node that did (in a cluster the device may be connected
	// to another). ErrNotConnected: no node holds it, so Wake sends the
	// datagram and the magic packets. Another error (a node that may hold
	// it did not answer) is listed as a failed attempt, and Wake sends
	// them too.
	PushWake func(device string) (node string, err error)
	// AgentPort is the agents' wake-up port. Default: 15000.
	AgentPort int
	// WOLPorts are the Wake-on-LAN ports. Default: 7 and 9.
	WOLPorts []int
	// SignHMAC signs wake-ups with the device's secret instead of the
	// gateway's Ed25519 key.
	SignHMAC bool
	// PerDevice and PerDeviceBurst limit wake-ups of one device. Default:
	// one per 10 s, bursts of 3.
	PerDevice      rate.Limit
	PerDeviceBurst int
	// Total limits all wake-ups. Default: 200/s, bursts of 400.
	Total rate.Limit
	// MaxDevices bounds the per-device state (rate limiters and the last
	// wake-up of each device): beyond it the device woken longest ago is
	// forgotten, so wake-ups of endless new ids (pushes to them) cannot
	// grow the heap. A forgotten limiter was full again anyway unless the
	// device was woken in the last half minute. Default: 50,000.
	MaxDevices int
	// ReplayWindow is how far a request's or notice's timestamp may be
	// from now; nonces are remembered for twice that. Default: 30s.
	ReplayWindow time.Duration
	// OnShutdown is told of a verified shutdown notice.
	OnShutdown func(device string, at time.Time)

	// Registerer takes the service's metrics (docs/METRICS.md). Default:
	// a registry of its own, read by nobody.
	Registerer prometheus.Registerer
	Logger     *slog.Logger // default slog.Default()
}

// Attempt is one way a wake-up was sent.
type Attempt struct {
	Via string `json:"via"` // push, datagram, wol
	To  string `json:"to,omitempty"`
	Err string `json:"error,omitempty"`
}

// ErrNotConnected is what Config.PushWake returns for a device that no
// node holds a push connection of.
var ErrNotConnected = errors.New("wake: the device is connected to no node")

// Result is what one wake-up did; the API shows the last one per device.
type Result struct {
	Device   string    `json:"device"`
	At       time.Time `json:"at"`
	Reason   string    `json:"reason"` // api, request, push
	Limited  bool      `json:"rate_limited,omitempty"`
	Unknown  bool      `json:"unknown_device,omitempty"` // no address or MAC known
	Attempts []Attempt `json:"attempts,omitempty"`
}

// Sent reports whether any attempt went out.
func (r Result) Sent() bool {
	for _, a := range r.Attempts {
		if a.Err == "" {
			return true
		}
	}
	return false
}

// FailedPush is the push attempt that failed because a node that may hold
// the device did not answer, if there was one.
func (r Result) FailedPush() (Attempt, bool) {
	for _, a := range r.Attempts {
		if a.Via == "push" && a.Err != "" {
			return a, true
		}
	}
	return Attempt{}, false
}

// Service forwards wake-ups and receives requests and shutdown notices.
type Service struct {
	cfg   Config
	m     *metrics
	log   *slog.Logger
	total *rate.Limiter

	guard *replayGuard

	mu     sync.Mutex
	perDev *simplelru.LRU[string, *rate.Limiter]
	last   *simplelru.LRU[string, Result]
}

// New builds a service; it does not listen.
func New(cfg Config) (*Service, error) {
	if cfg.Keys == nil || cfg.Lookup == nil {
		return nil, errors.New("wake: Keys and Lookup are required")
	}
	cfg.AgentPort = cmp.Or(cfg.AgentPort, DefaultAgentPort)
	if cfg.WOLPorts == nil {
		cfg.WOLPorts = DefaultWOLPorts()
	}
	if cfg.PerDevice == 0 {
		cfg.PerDevice, cfg.PerDeviceBurst = rate.Every(10*time.Second), 3
	}
	if cfg.PerDeviceBurst == 0 {
		cfg.PerDeviceBurst = 1
	}
	cfg.Total = cmp.Or(cfg.Total, 200)
	cfg.ReplayWindow = cmp.Or(cfg.ReplayWindow, 30*time.Second)
	if cfg.MaxDevices <= 0 {
		cfg.MaxDevices = 50_000
	}
	cfg.Registerer = cmp.Or[prometheus.Registerer](cfg.Registerer, prometheus.NewRegistry())
	cfg.Logger = cmp.Or(cfg.Logger, slog.Default())
	perDev, _ := simplelru.NewLRU[string, *rate.Limiter](cfg.MaxDevices, nil)
	last, _ := simplelru.NewLRU[string, Result](cfg.MaxDevices, nil)
	return &Service{cfg: cfg, m: newMetrics(cfg.Registerer), log: cfg.Logger,
		total:  rate.NewLimiter(cfg.Total, max(1, int(cfg.Total)*2)),
		guard:  newReplayGuard(cfg.ReplayWindow),
		perDev: perDev, last: last}, nil
}

// Wake wakes a device: a WAKE frame when it is connected (PushWake), else
// (after a failed push attempt too, listed first) the
// signed datagram to its address and, when its MAC is known, Wake-on-LAN
// to the limited broadcast and the directed broadcast of its subnet (both
// only through the interface whose subnet holds its address) and to its
// address, on every WOL port.
func (s *Service) Wake(device, reason string) Result {
	r := Result{Device: device, At: time.Now().UTC(), Reason: reason}
	defer s.record(&r)
	if !s.allow(device) {
		r.Limited = true
		return r
	}
	if s.cfg.PushWake != nil {
		node, err := s.cfg.PushWake(device)
		switch {
		case err == nil:
			r.Attempts = append(r.Attempts, Attempt{Via: "push", To: node})
			return r
		case !errors.Is(err, ErrNotConnected):
			r.Attempts = append(r.Attempts, Attempt{Via: "push", To: node, Err: err.Error()})
		}
	}
	t, ok := s.cfg.Lookup(device)
	if !ok || !t.Addr.IsValid() {
		r.Unknown = true
		return r
	}
	d := NewDatagram(KindWakeUp, device, time.Now().UnixMilli())
	if s.cfg.SignHMAC {
		SignHMAC(d, s.cfg.Keys.DeviceSecret(device))
	} else {
		SignEd25519(d, s.cfg.Keys.Signing)
	}
	b, _ := Marshal(d)
	to := netip.AddrPortFrom(t.Addr, uint16(s.cfg.AgentPort))
	r.Attempts = append(r.Attempts, attempt("datagram", to, send(to, b, "", false)))
	if len(t.MAC) == 6 {
		magic, _ := Marshal(&WakeOnLAN{MAC: t.MAC})
		ifName, bcast := subnetOf(t.Addr)
		for _, port := range s.cfg.WOLPorts {
			p := uint16(port)
			if ifName != "" {
				lim := netip.AddrPortFrom(netip.AddrFrom4([4]byte{255, 255, 255, 255}), p)
				r.Attempts = append(r.Attempts, attempt("wol", lim, send(lim, magic, ifName, true)))
				dir := netip.AddrPortFrom(bcast, p)
				r.Attempts = append(r.Attempts, attempt("wol", dir, send(dir, magic, "", true)))
			}
			uni := netip.AddrPortFrom(t.Addr, p)
			r.Attempts = append(r.Attempts, attempt("wol", uni, send(uni, magic, "", false)))
		}
	}
	return r
}

func attempt(via string, to netip.AddrPort, err error) Attempt {
	a := Attempt{Via: via, To: to.String()}
	if err != nil {
		a.Err = err.Error()
	}
	return a
}

func (s *Service) allow(device string) bool {
	s.mu.Lock()
	l, ok := s.perDev.Get(device)
	if !ok {
		l = rate.NewLimiter(s.cfg.PerDevice, s.cfg.PerDeviceBurst)
		s.perDev.Add(device, l)
	}
	s.mu.Unlock()
	return l.Allow() && s.total.Allow()
}

func (s *Service) record(r *Result) {
	s.mu.Lock()
	s.last.Add(r.Device, *r)
	s.mu.Unlock()
	switch {
	case r.Limited:
		s.m.limited.Inc()
	case r.Unknown:
		s.m.unknown.Inc()
	}
	for _, a := range r.Attempts {
		result := "ok"
		if a.Err != "" {
			result = "error"
		}
		s.m.sent.WithLabelValues(a.Via, result).Inc()
	}
	// One line per wake-up that went somewhere (at most the Total rate);
	// those limited or of unknown devices only at debug: a push to 100,000
	// new ids would write 100,000 lines. The counters above count them all.
	level := slog.LevelInfo
	if r.Limited || r.Unknown {
		level = slog.LevelDebug
	}
	s.log.Log(context.Background(), level, "wake-up", "device", r.Device, "reason", r.Reason, "sent", r.Sent(), "attempts", len(r.Attempts), "rate_limited", r.Limited, "unknown", r.Unknown)
}

// Keys are the service's keys.
func (s *Service) Keys() *Keys { return s.cfg.Keys }

// Last is the device's last wake-up.
func (s *Service) Last(device string) (Result, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last.Get(device)
}

// send writes one datagram from a fresh socket: broadcast allows
// SO_BROADCAST, ifName binds it to that interface (SO_BINDTODEVICE, on
// Linux; see BindsToDevice), so a limited broadcast leaves only into the
// device's LAN.
func send(to netip.AddrPort, b []byte, ifName string, broadcast bool) error {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) { serr = sendOptions(fd, ifName, broadcast) })
		return errors.Join(err, serr)
	}}
	network := "udp4"
	if to.Addr().Is6() && !to.Addr().Is4In6() {
		network = "udp6"
	}
	pc, err := lc.ListenPacket(context.Background(), network, ":0")
	if err != nil {
		return err
	}
	defer pc.Close()
	_, err = pc.(*net.UDPConn).WriteToUDPAddrPort(b, to)
	return err
}

// subnetOf finds the local interface whose IPv4 subnet holds addr and
// returns its name and the subnet's directed broadcast address.
func subnetOf(addr netip.Addr) (string, netip.Addr) {
	if !addr.Is4() {
		return "", netip.Addr{}
	}
	ifs, _ := net.Interfaces()
	for _, ifc := range ifs {
		as, _ := ifc.Addrs()
		for _, a := range as {
			ipn, ok := a.(*net.IPNet)
			if !ok || ipn.IP.To4() == nil || !ipn.Contains(addr.AsSlice()) {
				continue
			}
			ip, mask := ipn.IP.To4(), ipn.Mask
			if len(mask) == 16 {
				mask = mask[12:]
			}
			var b [4]byte
			for i := range b {
				b[i] = ip[i] | ^mask[i]
			}
			return ifc.Name, netip.AddrFrom4(b)
		}
	}
	return "", netip.Addr{}
}

// Rejection reasons (rejectReasons), as counted in
// dpgate_wake_rejected_total{reason}.
func reason(err error) string {
	switch {
	case errors.Is(err, ErrTruncated):
		return "truncated"
	case errors.Is(err, ErrMagic):
		return "not_dpgate"
	case errors.Is(err, ErrVersion):
		return "version"
	case errors.Is(err, ErrAlg), errors.Is(err, ErrTrailing), errors.Is(err, ErrNoDevice), errors.Is(err, ErrDeviceID):
		return "malformed"
	case errors.Is(err, ErrSignature):
		return "signature"
	case errors.Is(err, errExpired):
		return "expired"
	case errors.Is(err, errReplay):
		return "replay"
	case errors.Is(err, errKind):
		return "kind"
	}
	return "other"
}

var (
	errExpired = errors.New("wake: timestamp outside the replay window")
	errReplay  = errors.New("wake: nonce seen before")
	errKind    = errors.New("wake: wrong kind of datagram for this port")
)

// Check decodes and verifies an incoming request or notice of kind; key
// gives the HMAC secret for the device it names. It remembers the nonce,
// so the same datagram is accepted once.
func (s *Service) Check(b []byte, kind uint8, key func(device string) []byte) (*Datagram, error) {
	return s.guard.check(b, kind, func(d *Datagram) Verifier { return Verifier{Alg: AlgHMAC, Secret: key(d.DeviceID)} })
}

// replayGuard refuses datagrams outside the time window and nonces seen
// before.
type replayGuard struct {
	window  time.Duration
	mu      sync.Mutex
	nonces  map[string]time.Time // device + nonce -> when it may be forgotten
	pruneAt time.Time
}

func newReplayGuard(window time.Duration) *replayGuard {
	return &replayGuard{window: window, nonces: map[string]time.Time{}}
}

func (g *replayGuard) check(b []byte, kind uint8, verifier func(*Datagram) Verifier) (*Datagram, error) {
	d := &Datagram{}
	if err := d.DecodeFromBytes(b, nil); err != nil {
		return nil, err
	}
	if d.Kind != kind {
		return nil, errKind
	}
	if err := verifier(d).Verify(d); err != nil {
		return nil, err
	}
	now := time.Now()
	if age := now.Sub(time.UnixMilli(d.Timestamp)); age > g.window || age < -g.window {
		return nil, fmt.Errorf("%w (%s off)", errExpired, age.Round(time.Millisecond))
	}
	k := d.DeviceID + "\x00" + string(d.Nonce[:])
	g.mu.Lock()
	defer g.mu.Unlock()
	if now.After(g.pruneAt) {
		for n, until := range g.nonces {
			if now.After(until) {
				delete(g.nonces, n)
			}
		}
		g.pruneAt = now.Add(g.window)
	}
	if _, seen := g.nonces[k]; seen {
		return nil, errReplay
	}
	g.nonces[k] = now.Add(2 * g.window)
	return d, nil
}

// Receiver checks wake-ups on an agent: the gateway's signature (the key
// the agent was given), the time window and replays.
type Receiver struct {
	v     Verifier
	guard *replayGuard
}

// NewReceiver checks with v and a 30 s window.
func NewReceiver(v Verifier) *Receiver {
	return &Receiver{v: v, guard: newReplayGuard(30 * time.Second)}
}

// Check decodes and verifies one wake-up for device.
func (r *Receiver) Check(b []byte, device string) (*Datagram, error) {
	d, err := r.guard.check(b, KindWakeUp, func(*Datagram) Verifier { return r.v })
	if err == nil && d.DeviceID != device {
		return nil, fmt.Errorf("wake: a wake-up for %q, this is %q", d.DeviceID, device)
	}
	return d, err
}

// Reason is the label a rejection is counted under.
func Reason(err error) string { return reason(err) }

// ShutdownNotice is a signed shutdown notice of device.
func ShutdownNotice(device string, v Verifier) ([]byte, error) {
	if v.Alg != AlgHMAC {
		return nil, errors.New("wake: shutdown notices are signed with the device's secret (hmac:...)")
	}
	d := NewDatagram(KindShutdown, device, time.Now().UnixMilli())
	SignHMAC(d, v.Secret)
	return Marshal(d)
}

// ServeRequests answers wake requests on pc (wake.listen, UDP 15010),
// HMAC-signed with the gateway's secret, until pc is closed.
func (s *Service) ServeRequests(pc net.PacketConn) error {
	return s.serve(pc, KindRequest, func(string) []byte { return s.cfg.Keys.Secret }, func(d *Datagram) {
		go s.Wake(d.DeviceID, "request") // PushWake may ask another node; bounded by the rate limits
	})
}

// ServeShutdowns receives agents' shutdown notices on pc
// (wake.shutdown_listen, UDP 13000), each HMAC-signed with the device's
// secret, until pc is closed.
func (s *Service) ServeShutdowns(pc net.PacketConn) error {
	return s.serve(pc, KindShutdown, s.cfg.Keys.DeviceSecret, func(d *Datagram) {
		s.log.Info("device shut down", "device", d.DeviceID)
		if s.cfg.OnShutdown != nil {
			s.cfg.OnShutdown(d.DeviceID, time.UnixMilli(d.Timestamp))
		}
	})
}

func (s *Service) serve(pc net.PacketConn, kind uint8, key func(string) []byte, handle func(*Datagram)) error {
	buf := make([]byte, 2048)
	name := map[uint8]string{KindRequest: "request", KindShutdown: "shutdown"}[kind]
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		d, err := s.Check(buf[:n], kind, key)
		if err != nil {
			s.m.rejected.WithLabelValues(name, reason(err)).Inc()
			s.log.Debug("wake: datagram rejected", "from", from.String(), "err", err)
			continue
		}
		s.m.received.WithLabelValues(name).Inc()
		handle(d)
	}
}
