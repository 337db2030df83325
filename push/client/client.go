// Package client is the agent side of the dpgate push protocol: it keeps
// one connection to a push server (TLS over TCP or QUIC), reconnects with
// jittered exponential backoff, follows REDIRECT and DRAIN, fails over
// along the node list WELCOME gives, acknowledges every push after the
// handler returns, and drops duplicates by message id. dpgate agent and
// dpload use it.
package client

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/dpgate/dpgate/push/wire"
)

// Config configures a Client. Zero values mean the defaults in comments.
type Config struct {
	// Servers are push addresses (host:port), tried in order. Required.
	Servers []string
	// DeviceID is this agent's id. Required.
	DeviceID string
	// TLS holds the server pin check and, for push.auth cert, the client
	// certificate. Required.
	TLS *tls.Config
	// QUIC connects over QUIC instead of TLS over TCP.
	QUIC bool
	// Token is the device token for push.auth token.
	Token string
	// TokenFunc, when set, gives the token at every connect instead (a
	// file an operator replaces when the token keys rotate); an error
	// fails that attempt, which is retried as any other.
	TokenFunc func() (string, error)
	MAC       net.HardwareAddr // reported for Wake-on-LAN
	LocalAddr netip.Addr       // reported for wake-up datagrams
	// SourceIP binds outgoing connections to this local address (load
	// tests spread over 127.0.0.0/8 with it). Default: the system's choice.
	SourceIP net.IP
	// MinBackoff and MaxBackoff bound the reconnect delay, which doubles
	// per failure with full jitter. Defaults: 500ms, 30s.
	MinBackoff, MaxBackoff time.Duration
	// DedupeWindow is how many recent message ids are remembered.
	// Default: 4096.
	DedupeWindow int
	// OnPush is called for each new push, in order; the ACK is sent after
	// it returns. Required.
	OnPush func(wire.Message)
	// OnEvent, when set, hears connects, disconnects, redirects and drains.
	OnEvent func(Event)
	Logger  *slog.Logger // default slog.Default()
}

// Event is a change of the client's connection.
type Event struct {
	Kind    string // "connected", "disconnected", "redirect", "drain", "replaced", "error", "wake"
	Server  string
	Session [16]byte
	Err     error
	Retry   time.Duration // for "error" and "replaced": the wait before the next attempt
}

// ErrStopped is the Err of the "disconnected" event of a session ended
// because Run's context was done: the caller stopped the agent.
var ErrStopped = errors.New("the agent stopped")

// Client is one agent's push connection.
type Client struct {
	cfg  Config
	log  *slog.Logger
	seen dedupe
	wake chan struct{} // Wake: end a reconnect wait

	mu       sync.Mutex
	nodes    []string // from the last WELCOME
	current  *conn
	received atomic.Uint64
	dups     atomic.Uint64
	// tokens keeps the gateways' QUIC address-validation tokens
	// (NEW_TOKEN), so a reconnect skips the Retry round trip.
	tokens quic.TokenStore
}

// New checks the configuration; Run connects.
func New(cfg Config) (*Client, error) {
	if len(cfg.Servers) == 0 || cfg.DeviceID == "" || cfg.TLS == nil || cfg.OnPush == nil {
		return nil, errors.New("push/client: Servers, DeviceID, TLS and OnPush are required")
	}
	cfg.MinBackoff = cmp.Or(cfg.MinBackoff, 500*time.Millisecond)
	cfg.MaxBackoff = cmp.Or(cfg.MaxBackoff, 30*time.Second)
	cfg.DedupeWindow = cmp.Or(cfg.DedupeWindow, 4096)
	cfg.Logger = cmp.Or(cfg.Logger, slog.Default())
	return &Client{cfg: cfg, log: cfg.Logger, seen: newDedupe(cfg.DedupeWindow), wake: make(chan struct{}, 1),
		tokens: quic.NewLRUTokenStore(8, 4)}, nil
}

// Received counts pushes handed to OnPush; Duplicates those dropped.
func (c *Client) Received() uint64   { return c.received.Load() }
func (c *Client) Duplicates() uint64 { return c.dups.Load() }

// outcome says how a connection ended and where to go next.
type outcome struct {
	redirect string        // REDIRECT: go there at once
	drain    time.Duration // DRAIN: wait, then another node
	welcomed bool          // the server accepted the session
	replaced bool          // ERROR replaced: another connection took this device id
	err      error
}

// Run keeps the agent connected until ctx ends.
func (c *Client) Run(ctx context.Context) error {
	failures := 0
	next := ""
	i := 0
	for ctx.Err() == nil {
		addr := next
		if addr == "" {
			list := c.candidates()
			addr = list[i%len(list)]
		}
		redirected := next != ""
		next = ""
		out := c.session(ctx, addr, redirected)
		if ctx.Err() != nil {
			return nil
		}
		if out.welcomed {
			failures = 0
		}
		switch {
		case out.redirect != "":
			c.event(Event{Kind: "redirect", Server: out.redirect})
			next = out.redirect
			continue
		case out.drain > 0 || (out.err == nil && out.welcomed):
			c.event(Event{Kind: "drain", Server: addr})
			i++ // another node, after the server's delay
			if !c.sleep(ctx, out.drain) {
				return nil
			}
			continue
		}
		if out.replaced {
			// Another live agent uses this device id (a configuration
			// mistake): wait long, or the two would replace each other in
			// a tight loop.
			d := c.cfg.MaxBackoff/2 + c.backoff(20)/2
			c.event(Event{Kind: "replaced", Server: addr, Err: out.err, Retry: d})
			if !c.sleep(ctx, d) {
				return nil
			}
			continue
		}
		failures++
		d := c.backoff(failures)
		c.event(Event{Kind: "error", Server: addr, Err: out.err, Retry: d})
		i++ // fail over to the next node
		if !c.sleep(ctx, d) {
			return nil
		}
	}
	return nil
}

// candidates is the configured servers followed by WELCOME's nodes.
func (c *Client) candidates() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := append([]string(nil), c.cfg.Servers...)
	for _, n := range c.nodes {
		dup := false
		for _, s := range out {
			dup = dup || s == n
		}
		if !dup {
			out = append(out, n)
		}
	}
	return out
}

// backoff is full-jitter exponential: uniform in [0, min(max, min*2^n)).
func (c *Client) backoff(failures int) time.Duration {
	d := c.cfg.MinBackoff << min(failures, 20)
	if d <= 0 || d > c.cfg.MaxBackoff {
		d = c.cfg.MaxBackoff
	}
	return time.Duration(mrand.Int64N(int64(d))) + c.cfg.MinBackoff/2
}

// sleep waits d; a Wake cuts it short. It reports false when ctx ended.
func (c *Client) sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-c.wake:
		return true
	case <-ctx.Done():
		return false
	}
}

// Wake is a wake-up for this agent (a verified datagram on its wake-up
// port): a reconnect wait ends at once and the next attempt starts.
func (c *Client) Wake() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
	c.event(Event{Kind: "wake"})
}

func (c *Client) event(e Event) {
	if c.cfg.OnEvent != nil {
		c.cfg.OnEvent(e)
	}
}

// conn is one connection to a server.
type conn struct {
	rw       io.ReadWriteCloser
	setRead  func(time.Time) error
	setWrite func(time.Time) error
	qc       *quic.Conn // QUIC only
	wmu      sync.Mutex

	tmu       sync.Mutex      // guards transport, which Migrate replaces
	transport *quic.Transport // QUIC only
}

func (k *conn) getTransport() *quic.Transport {
	k.tmu.Lock()
	defer k.tmu.Unlock()
	return k.transport
}

func (k *conn) send(frame []byte) error {
	k.wmu.Lock()
	defer k.wmu.Unlock()
	k.setWrite(time.Now().Add(10 * time.Second))
	_, err := k.rw.Write(frame)
	return err
}

func (k *conn) close() {
	k.rw.Close()
	if k.qc != nil {
		k.qc.CloseWithError(0, "")
	}
	if tr := k.getTransport(); tr != nil {
		tr.Close()
	}
}

func (c *Client) dial(ctx context.Context, addr string) (*conn, error) {
	cfg := c.cfg.TLS.Clone()
	cfg.NextProtos = []string{wire.ALPN}
	if !c.cfg.QUIC {
		nd := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: -1}
		if c.cfg.SourceIP != nil {
			nd.LocalAddr = &net.TCPAddr{IP: c.cfg.SourceIP}
		}
		d := tls.Dialer{NetDialer: nd, Config: cfg}
		nc, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		return &conn{rw: nc, setRead: nc.SetReadDeadline, setWrite: nc.SetWriteDeadline}, nil
	}
	udp, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, err
	}
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: c.cfg.SourceIP})
	if err != nil {
		return nil, err
	}
	tr := &quic.Transport{Conn: pc}
	qc, err := tr.Dial(ctx, udp, cfg, &quic.Config{
		HandshakeIdleTimeout: 10 * time.Second,
		// QUIC's own keep-alive (a PING frame, no stream data) every 10 s
		// keeps NAT bindings and the idle timer fresh between the
		// protocol's PINGs; quic-go's default idle timeout of 30 s would
		// race the default 30 s keepalive.
		KeepAlivePeriod: 10 * time.Second,
		MaxIdleTimeout:  60 * time.Second,
		TokenStore:      c.tokens,
	})
	if err != nil {
		tr.Close()
		pc.Close()
		return nil, err
	}
	st, err := qc.OpenStreamSync(ctx)
	if err != nil {
		qc.CloseWithError(0, "")
		tr.Close()
		pc.Close()
		return nil, err
	}
	return &conn{rw: st, setRead: st.SetReadDeadline, setWrite: st.SetWriteDeadline, qc: qc, transport: tr}, nil
}

// session runs one connection from dial to its end.
func (c *Client) session(ctx context.Context, addr string, redirected bool) outcome {
	token := c.cfg.Token
	if c.cfg.TokenFunc != nil {
		t, err := c.cfg.TokenFunc()
		if err != nil {
			return outcome{err: fmt.Errorf("device token: %w", err)}
		}
		token = t
	}
	k, err := c.dial(ctx, addr)
	if err != nil {
		return outcome{err: fmt.Errorf("dial %s: %w", addr, err)}
	}
	defer k.close()
	// Unblock reads when ctx ends.
	stop := context.AfterFunc(ctx, func() { k.send(wire.MarshalBye(0)); k.close() })
	defer stop()

	hello := wire.Hello{MinVersion: wire.Version, MaxVersion: wire.Version, DeviceID: c.cfg.DeviceID,
		MAC: c.cfg.MAC, LocalAddr: c.cfg.LocalAddr, Token: token, LastAck: 0}
	if redirected {
		hello.Caps |= wire.CapRedirected
	}
	if c.cfg.OnEvent != nil {
		hello.Caps |= wire.CapWake // a WAKE frame becomes a "wake" event
	}
	if err := k.send(hello.Marshal()); err != nil {
		return outcome{err: err}
	}
	var hdr [wire.HeaderSize]byte
	buf := make([]byte, 0, 512)
	k.setRead(time.Now().Add(15 * time.Second))
	typ, body, err := wire.ReadFrame(k.rw, &hdr, buf, wire.MaxFrame)
	if err != nil {
		return outcome{err: fmt.Errorf("waiting for WELCOME: %w", err)}
	}
	switch typ {
	case wire.TypeRedirect:
		r, err := wire.ParseRedirect(body)
		if err != nil {
			return outcome{err: err}
		}
		return outcome{redirect: r.Address}
	case wire.TypeError:
		e, _ := wire.ParseError(body)
		return outcome{err: fmt.Errorf("server refused the session: code %d: %s", e.Code, e.Reason)}
	case wire.TypeWelcome:
	default:
		return outcome{err: fmt.Errorf("expected WELCOME, got frame type 0x%02x", typ)}
	}
	w, err := wire.ParseWelcome(body)
	if err != nil {
		return outcome{err: err}
	}
	c.mu.Lock()
	c.nodes = w.Nodes
	c.current = k
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		if c.current == k {
			c.current = nil
		}
		c.mu.Unlock()
	}()
	c.event(Event{Kind: "connected", Server: addr, Session: w.Session})
	keep := time.Duration(w.Keepalive) * time.Second
	if keep <= 0 {
		keep = 30 * time.Second
	}
	pingDone := make(chan struct{})
	defer close(pingDone)
	go func() { // PINGs until the session ends
		t := time.NewTicker(keep)
		defer t.Stop()
		for n := uint64(1); ; n++ {
			select {
			case <-pingDone:
				return
			case <-t.C:
				if k.send(wire.MarshalU64(wire.TypePing, n)) != nil {
					return
				}
			}
		}
	}()
	out := outcome{welcomed: true}
	for {
		k.setRead(time.Now().Add(3 * keep))
		typ, body, err := wire.ReadFrame(k.rw, &hdr, buf, wire.MaxFrame)
		if err != nil {
			if ctx.Err() != nil { // our own closing, not the server's or the network's doing
				err = ErrStopped
			}
			out.err = err
			c.event(Event{Kind: "disconnected", Server: addr, Err: err})
			return out
		}
		switch typ {
		case wire.TypePush:
			m, err := wire.ParseMessage(body)
			if err != nil {
				k.send((&wire.ErrorFrame{Code: wire.CodeProtocol, Reason: err.Error()}).Marshal())
				out.err = err
				return out
			}
			if c.seen.add(m.ID) {
				m.Payload = append([]byte(nil), m.Payload...) // body is reused
				c.received.Add(1)
				c.cfg.OnPush(m)
			} else {
				c.dups.Add(1)
			}
			if err := k.send(wire.MarshalU64(wire.TypeAck, m.Seq)); err != nil {
				out.err = err
				return out
			}
		case wire.TypePong, wire.TypePing:
			if typ == wire.TypePing {
				v, _ := wire.ParseU64(body)
				k.send(wire.MarshalU64(wire.TypePong, v))
			}
		case wire.TypeRedirect:
			// The cluster moves this agent to a less loaded node.
			r, err := wire.ParseRedirect(body)
			if err != nil {
				out.err = err
				return out
			}
			out.redirect = r.Address
			return out
		case wire.TypeDrain:
			d, _ := wire.ParseDrain(body)
			out.drain = max(time.Duration(d.DelayMillis)*time.Millisecond, time.Millisecond)
			return out
		case wire.TypeError:
			e, _ := wire.ParseError(body)
			out.err = fmt.Errorf("server closed the session: code %d: %s", e.Code, e.Reason)
			out.replaced = e.Code == wire.CodeReplaced
			return out
		case wire.TypeWake:
			c.event(Event{Kind: "wake", Server: addr}) // connected already: the agent syncs
		case wire.TypeBye:
			return out
		default:
			out.err = fmt.Errorf("unexpected frame type 0x%02x", typ)
			return out
		}
	}
}

// Migrate moves a QUIC session to a new local UDP socket, as when a
// roaming agent changes networks; the session and its queue position stay.
func (c *Client) Migrate(ctx context.Context) error {
	c.mu.Lock()
	k := c.current
	c.mu.Unlock()
	if k == nil || k.qc == nil {
		return errors.New("push/client: no QUIC session to migrate")
	}
	pc, err := net.ListenUDP("udp", nil)
	if err != nil {
		return err
	}
	tr := &quic.Transport{Conn: pc}
	path, err := k.qc.AddPath(tr)
	if err != nil {
		tr.Close()
		return err
	}
	if err := path.Probe(ctx); err != nil {
		path.Close()
		tr.Close()
		return fmt.Errorf("probing the new path: %w", err)
	}
	if err := path.Switch(); err != nil {
		path.Close()
		tr.Close()
		return err
	}
	k.tmu.Lock()
	old := k.transport
	k.transport = tr
	k.tmu.Unlock()
	// The old socket stays open briefly for packets in flight.
	time.AfterFunc(5*time.Second, func() { old.Close() })
	return nil
}

// Reconnect drops the current connection; Run connects again after its
// usual backoff, as after a network failure.
func (c *Client) Reconnect() {
	c.mu.Lock()
	k := c.current
	c.mu.Unlock()
	if k != nil {
		k.close()
	}
}

// LocalAddr is the local address of the current connection, if any.
func (c *Client) LocalAddr() net.Addr {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.current == nil {
		return nil
	}
	if tr := c.current.getTransport(); tr != nil {
		return tr.Conn.LocalAddr() // follows migrations
	}
	if nc, ok := c.current.rw.(net.Conn); ok {
		return nc.LocalAddr()
	}
	return nil
}

// dedupe remembers the last n message ids: a wire.RecentIDs behind a
// lock.
type dedupe struct {
	mu  sync.Mutex
	ids *wire.RecentIDs
}

func newDedupe(n int) dedupe { return dedupe{ids: wire.NewRecentIDs(n)} }

// add reports whether id is new, remembering it.
func (d *dedupe) add(id [16]byte) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.ids.Add(id)
}
