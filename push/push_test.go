package push_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dpgate/dpgate/internal/testutil"
	"github.com/dpgate/dpgate/push"
	"github.com/dpgate/dpgate/push/client"
	"github.com/dpgate/dpgate/push/queue"
	"github.com/dpgate/dpgate/push/wire"
	"github.com/dpgate/dpgate/tlsconf"
)

func TestDeliveryConnectedAndOffline(t *testing.T) {
	t.Parallel()
	for _, transport := range []string{"tls", "quic"} {
		t.Run(transport, func(t *testing.T) {
			ts := newTestServer(t, nil)
			cert := ts.agentCert(t, "dev-1")
			// Offline first: queued before the device ever connects.
			for _, p := range payloads(3, "early") {
				if _, err := ts.Push("dev-1", []byte(p), time.Hour); err != nil {
					t.Fatal(err)
				}
			}
			addr := ts.addr
			if transport == "quic" {
				addr = ts.quicAddr
			}
			a := startAgent(t, client.Config{Servers: []string{addr}, DeviceID: "dev-1", TLS: ts.tlsFor(&cert), QUIC: transport == "quic"})
			for i, want := range payloads(3, "early") {
				if m := a.next(t); string(m.Payload) != want || m.Seq != uint64(i+1) {
					t.Fatalf("push %d: got seq %d %q, want seq %d %q", i, m.Seq, m.Payload, i+1, want)
				}
			}
			// Connected now: delivered at once, and ACKed.
			m, _ := ts.Push("dev-1", []byte("live"), time.Hour)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			if err := ts.WaitID(ctx, m.ID); err != nil {
				t.Fatalf("no ACK for the live push: %v", err)
			}
			if got := a.next(t); string(got.Payload) != "live" {
				t.Errorf("got %q, want live", got.Payload)
			}
			waitFor(t, 10*time.Second, func() error {
				if n, _ := ts.queue.Len("dev-1"); n != 0 {
					return fmt.Errorf("%d pushes still queued after their ACKs", n)
				}
				return nil
			})
			d, ok := ts.Device("dev-1")
			if !ok || !d.Connected || d.Transport != transport {
				t.Errorf("device status %+v, want connected over %s", d, transport)
			}
		})
	}
}

// TestRedeliveryAfterDrop: a push sent but not acknowledged before the
// connection dropped comes again on the next connection, same id.
func TestRedeliveryAfterDrop(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, func(c *push.Config) { c.Auth = push.AuthNone })
	raw := dialRaw(t, ts, nil)
	raw.hello(t, "dev-2")
	m, _ := ts.Push("dev-2", []byte("once"), time.Hour)
	typ, body := raw.read(t)
	first, err := wire.ParseMessage(body)
	if typ != wire.TypePush || err != nil || first.ID != m.ID {
		t.Fatalf("got frame 0x%02x (%v), want the PUSH", typ, err)
	}
	raw.Close() // no ACK

	again := dialRaw(t, ts, nil)
	again.hello(t, "dev-2")
	typ, body = again.read(t)
	second, err := wire.ParseMessage(body)
	if typ != wire.TypePush || err != nil || second.ID != m.ID || string(second.Payload) != "once" {
		t.Fatalf("after reconnect got 0x%02x %+v, want the same push again", typ, second)
	}
}

// TestClientDropsDuplicates: a server that sends the same message id
// twice (as after a lost ACK) gets two ACKs, and the agent sees it once.
func TestClientDropsDuplicates(t *testing.T) {
	t.Parallel()
	gw, _ := tlsconf.Issue(tlsconf.Template{CommonName: "fake"}, nil)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{gw}, NextProtos: []string{wire.ALPN}})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	acks := make(chan uint64, 4)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		var hdr [wire.HeaderSize]byte
		wire.ReadFrame(c, &hdr, nil, wire.MaxFrame) // HELLO
		c.Write((&wire.Welcome{Version: 1, Keepalive: 30}).Marshal())
		m := wire.Message{Seq: 1, ID: [16]byte{9}, Expiry: time.Now().Add(time.Hour).UnixMilli(), Payload: []byte("dup")}
		c.Write(m.Marshal())
		m.Seq = 2
		c.Write(m.Marshal())
		for range 2 {
			typ, body, err := wire.ReadFrame(c, &hdr, nil, wire.MaxFrame)
			if err != nil {
				return
			}
			if typ == wire.TypeAck {
				v, _ := wire.ParseU64(body)
				acks <- v
			}
		}
		io.Copy(io.Discard, c)
	}()
	pins, _ := tlsconf.ParsePins([]string{tlsconf.Pin(gw.Leaf)})
	a := startAgent(t, client.Config{Servers: []string{ln.Addr().String()}, DeviceID: "d", TLS: tlsconf.PinnedClientConfig(pins, "fake")})
	if m := a.next(t); string(m.Payload) != "dup" {
		t.Fatalf("got %q", m.Payload)
	}
	for want := uint64(1); want <= 2; want++ {
		select {
		case got := <-acks:
			if got != want {
				t.Errorf("ACK %d, want %d", got, want)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("no ACK for seq %d", want)
		}
	}
	select {
	case m := <-a.pushes:
		t.Errorf("duplicate delivered to the agent: %+v", m)
	default:
	}
	if a.Duplicates() != 1 {
		t.Errorf("duplicates counted %d, want 1", a.Duplicates())
	}
}

func TestTTLExpiry(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, func(c *push.Config) { c.Auth = push.AuthNone; c.ExpireInterval = 20 * time.Millisecond })
	ts.Push("dev-3", []byte("short"), 30*time.Millisecond)
	waitFor(t, 10*time.Second, func() error {
		if n, _ := ts.queue.Len("dev-3"); ts.Expired() != 1 || n != 0 {
			return fmt.Errorf("expired %d, queued %d; want 1 and 0", ts.Expired(), n)
		}
		return nil
	})
	ts.Push("dev-3", []byte("long"), time.Hour)
	raw := dialRaw(t, ts, nil)
	raw.hello(t, "dev-3")
	_, body := raw.read(t)
	if m, _ := wire.ParseMessage(body); string(m.Payload) != "long" {
		t.Errorf("first delivered push is %q, want the unexpired one", m.Payload)
	}
}

// TestExpiryLoggedOnceASweep: pushes to many devices that expire
// together are one log line, with the counts and a few of the devices.
// Seen: a push to 5,000 offline devices with a TTL of 2 s wrote 5,000
// warnings in one sweep ("pushes expired undelivered" device=pc-4816
// count=1, ...); a push to all devices of a large site would write one
// per device.
func TestExpiryLoggedOnceASweep(t *testing.T) {
	t.Parallel()
	var log testutil.Buffer
	ts := newTestServer(t, func(c *push.Config) {
		c.Auth, c.ExpireInterval, c.Logger = push.AuthNone, 20*time.Millisecond, log.Logger(slog.LevelInfo)
	})
	var devices []string
	for i := range 50 {
		devices = append(devices, fmt.Sprintf("dev-%02d", i))
	}
	payloads := make([][]byte, len(devices))
	for i := range payloads {
		payloads[i] = []byte("short")
	}
	if _, err := ts.queue.Enqueue(devices, payloads, 30*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	// The sweep counts the pushes as it drops them, and logs after: wait
	// for both (CI once read the log between the two).
	var lines []string
	waitFor(t, 10*time.Second, func() error {
		lines = log.Lines("pushes expired undelivered")
		if n := ts.Expired(); n != 50 || len(lines) == 0 {
			return fmt.Errorf("%d expired, want 50; %d lines logged", n, len(lines))
		}
		return nil
	})
	if len(lines) != 1 {
		t.Fatalf("%d lines for 50 devices' pushes expired in one sweep, want 1:\n%s", len(lines), strings.Join(lines, "\n"))
	}
	for _, want := range []string{"devices=50", "pushes=50", "dev-00", "dev-09", "and 40 more"} {
		if !strings.Contains(lines[0], want) {
			t.Errorf("the line %q does not say %q", lines[0], want)
		}
	}
}

// TestPerDeviceOrder: concurrent publishers, one device: the agent gets
// every push in sequence order.
func TestPerDeviceOrder(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, func(c *push.Config) { c.Auth = push.AuthNone })
	a := startAgent(t, client.Config{Servers: []string{ts.addr}, DeviceID: "dev-4", TLS: ts.tlsFor(nil)})
	a.waitEvent(t, "connected")
	const n = 300
	var wg sync.WaitGroup
	for w := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 6 {
				if _, err := ts.Push("dev-4", []byte(fmt.Sprint(i)), time.Hour); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	last := uint64(0)
	for range n {
		m := a.next(t)
		if m.Seq != last+1 {
			t.Fatalf("got seq %d after %d, want %d", m.Seq, last, last+1)
		}
		last = m.Seq
	}
}

// TestDrainMovesAgents: a server shutting down sends DRAIN; the agent
// reconnects to the next server in its list. Over QUIC too: closing the
// QUIC transport when accepting stops ended every QUIC session at once,
// with no DRAIN (and, during an upgrade, no reconnect until the idle
// timeout), so the transport is closed only after the sessions.
func TestDrainMovesAgents(t *testing.T) {
	t.Parallel()
	for _, overQUIC := range []bool{false, true} {
		t.Run(map[bool]string{false: "tls", true: "quic"}[overQUIC], func(t *testing.T) {
			a1 := newTestServer(t, func(c *push.Config) { c.Auth, c.DrainSpread = push.AuthNone, 50*time.Millisecond })
			a2 := newTestServer(t, func(c *push.Config) { c.Auth = push.AuthNone })
			addr1, addr2 := a1.addr, a2.addr
			if overQUIC {
				addr1, addr2 = a1.quicAddr, a2.quicAddr
			}
			// Both servers must pass the agent's pin check: give the agent both pins.
			pins, _ := tlsconf.ParsePins([]string{a1.id.Pin(), a2.id.Pin()})
			ag := startAgent(t, client.Config{Servers: []string{addr1, addr2}, DeviceID: "dev-5", QUIC: overQUIC,
				TLS: tlsconf.PinnedClientConfig(pins, "gw")})
			if e := ag.waitEvent(t, "connected"); e.Server != addr1 {
				t.Fatalf("connected to %s first, want %s", e.Server, addr1)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			if err := a1.Shutdown(ctx); err != nil {
				t.Fatalf("Shutdown: %v", err)
			}
			if e := ag.waitEvent(t, "drain"); e.Server != addr1 {
				t.Errorf("DRAIN from %s, want %s", e.Server, addr1)
			}
			if e := ag.waitEvent(t, "connected"); e.Server != addr2 {
				t.Errorf("after DRAIN connected to %s, want %s", e.Server, addr2)
			}
			a2.Push("dev-5", []byte("on the second"), time.Hour)
			if m := ag.next(t); string(m.Payload) != "on the second" {
				t.Errorf("got %q", m.Payload)
			}
		})
	}
}

// TestRedirectFollowed: a node answering HELLO with REDIRECT sends the
// agent to the address it names.
func TestRedirectFollowed(t *testing.T) {
	t.Parallel()
	real := newTestServer(t, func(c *push.Config) { c.Auth = push.AuthNone })
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{GetCertificate: real.id.GetCertificate, NextProtos: []string{wire.ALPN}})
	if err != nil {
		t.Fatal(err)
	}
	testutil.Serve(t, ln, func(c net.Conn) {
		var hdr [wire.HeaderSize]byte
		wire.ReadFrame(c, &hdr, nil, wire.MaxFrame)
		c.Write((&wire.Redirect{Reason: 2, Address: real.addr}).Marshal())
	})
	a := startAgent(t, client.Config{Servers: []string{ln.Addr().String()}, DeviceID: "dev-6", TLS: real.tlsFor(nil)})
	if e := a.waitEvent(t, "redirect"); e.Server != real.addr {
		t.Errorf("redirected to %s, want %s", e.Server, real.addr)
	}
	if e := a.waitEvent(t, "connected"); e.Server != real.addr {
		t.Errorf("connected to %s, want %s", e.Server, real.addr)
	}
}

// TestQUICMigration: the agent moves to a new UDP socket mid-session and
// keeps receiving on the same session.
func TestQUICMigration(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, func(c *push.Config) { c.Auth = push.AuthNone })
	a := startAgent(t, client.Config{Servers: []string{ts.quicAddr}, DeviceID: "dev-7", TLS: ts.tlsFor(nil), QUIC: true})
	first := a.waitEvent(t, "connected")
	ts.Push("dev-7", []byte("before"), time.Hour)
	a.next(t)
	before := a.LocalAddr().String()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := a.Migrate(ctx); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	if after := a.LocalAddr().String(); after == before {
		t.Fatalf("local address still %s after migrating", after)
	}
	ts.Push("dev-7", []byte("after"), time.Hour)
	if m := a.next(t); string(m.Payload) != "after" {
		t.Fatalf("got %q, want after", m.Payload)
	}
	select {
	case e := <-a.events:
		t.Errorf("event %q %v after migrating, want the session %x to continue", e.Kind, e.Err, first.Session)
	default:
	}
}

// TestMalformedFramesCloseOnlyThatConnection: garbage and oversized
// frames get an ERROR with a reason; a well-behaved agent stays served.
func TestMalformedFramesCloseOnlyThatConnection(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, func(c *push.Config) { c.Auth = push.AuthNone })
	good := startAgent(t, client.Config{Servers: []string{ts.addr}, DeviceID: "good", TLS: ts.tlsFor(nil)})
	good.waitEvent(t, "connected")

	cases := []struct {
		name  string
		send  func(r *rawConn)
		hello bool
		code  uint16
	}{
		{"garbage HELLO", func(r *rawConn) { r.Write([]byte{wire.TypeHello, 0, 0, 3, 1, 2, 3}) }, false, wire.CodeProtocol},
		{"first frame not HELLO", func(r *rawConn) { r.Write(wire.MarshalU64(wire.TypePing, 1)) }, false, wire.CodeProtocol},
		{"unsupported version", func(r *rawConn) {
			r.Write((&wire.Hello{MinVersion: 7, MaxVersion: 9, DeviceID: "x"}).Marshal())
		}, false, wire.CodeVersion},
		{"oversized frame in session", func(r *rawConn) { r.Write([]byte{wire.TypeAck, 0x01, 0, 0}) }, true, wire.CodeFrameTooLarge},
		{"server-only frame from agent", func(r *rawConn) {
			r.Write((&wire.Message{Seq: 1}).Marshal())
		}, true, wire.CodeProtocol},
		{"short ACK", func(r *rawConn) { r.Write([]byte{wire.TypeAck, 0, 0, 2, 0, 1}) }, true, wire.CodeProtocol},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := dialRaw(t, ts, nil)
			if tc.hello {
				r.hello(t, "bad-"+strings.ReplaceAll(tc.name, " ", "-"))
			}
			tc.send(r)
			if e := r.expectError(t); e.Code != tc.code || e.Reason == "" {
				t.Errorf("ERROR code %d %q, want code %d with a reason", e.Code, e.Reason, tc.code)
			}
			if _, err := r.Read(make([]byte, 1)); err == nil {
				t.Error("connection still open after the ERROR")
			}
		})
	}
	ts.Push("good", []byte("still here"), time.Hour)
	if m := good.next(t); string(m.Payload) != "still here" {
		t.Errorf("good agent got %q", m.Payload)
	}
}

func TestCertificateAuth(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, nil)
	known := ts.agentCert(t, "dev-8")
	stranger, _ := tlsconf.Issue(tlsconf.Template{CommonName: "dev-9", Client: true}, nil)

	// A certificate for dev-8 cannot claim another device id.
	r := dialRaw(t, ts, &known)
	r.Write((&wire.Hello{MinVersion: 1, MaxVersion: 1, DeviceID: "someone-else"}).Marshal())
	if e := r.expectError(t); e.Code != wire.CodeAuth {
		t.Errorf("mismatched device id: ERROR code %d, want %d", e.Code, wire.CodeAuth)
	}
	// Unknown certificate: refused at the TLS handshake.
	cfg := ts.tlsFor(&stranger)
	cfg.NextProtos = []string{wire.ALPN}
	if c, err := tls.Dial("tcp", ts.addr, cfg); err == nil {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Error("unknown certificate got a session")
		}
		c.Close()
	}
	// Deleted while running: the next connection is refused.
	a := startAgent(t, client.Config{Servers: []string{ts.addr}, DeviceID: "dev-8", TLS: ts.tlsFor(&known)})
	a.waitEvent(t, "connected")
	ts.allow.Remove(tlsconf.Fingerprint(known.Leaf))
	r2 := dialRaw(t, ts, &known)
	r2.Write((&wire.Hello{MinVersion: 1, MaxVersion: 1, DeviceID: "dev-8"}).Marshal())
	if _, _, err := wire.ReadFrame(r2, &r2.hdr, nil, wire.MaxFrame); err == nil {
		t.Error("deleted certificate got an answer to HELLO")
	}
}

func TestTokenAuth(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, func(c *push.Config) { c.Auth = push.AuthToken })
	good := wire.IssueToken(ts.tokenKey, "dev-10", time.Now().Add(time.Hour))
	a := startAgent(t, client.Config{Servers: []string{ts.addr}, DeviceID: "dev-10", Token: good, TLS: ts.tlsFor(nil)})
	a.waitEvent(t, "connected")

	for name, tok := range map[string]string{
		"other device": wire.IssueToken(ts.tokenKey, "dev-11", time.Now().Add(time.Hour)),
		"expired":      wire.IssueToken(ts.tokenKey, "dev-10", time.Now().Add(-time.Minute)),
		"wrong key":    wire.IssueToken([]byte("another key of 32 bytes........."), "dev-10", time.Now().Add(time.Hour)),
		"garbage":      "v1.x.y.z",
	} {
		r := dialRaw(t, ts, nil)
		r.Write((&wire.Hello{MinVersion: 1, MaxVersion: 1, DeviceID: "dev-10", Token: tok}).Marshal())
		if e := r.expectError(t); e.Code != wire.CodeAuth {
			t.Errorf("%s token: ERROR code %d, want %d", name, e.Code, wire.CodeAuth)
		}
	}
	if _, err := wire.VerifyToken([][]byte{ts.tokenKey}, good, time.Now()); err != nil {
		t.Errorf("good token: %v", err)
	}
}

// TestTokenKeyRotation: keys are replaced live; while old and new are both
// held, tokens of either are accepted; once the old one is retired, its
// tokens get ERROR 3.
func TestTokenKeyRotation(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, func(c *push.Config) { c.Auth = push.AuthToken })
	newKey := []byte("the next key, 32 bytes long.....")
	oldTok := wire.IssueToken(ts.tokenKey, "dev-r", time.Now().Add(time.Hour))
	newTok := wire.IssueToken(newKey, "dev-r", time.Now().Add(time.Hour))
	hello := func(tok string) (byte, []byte) {
		r := dialRaw(t, ts, nil)
		defer r.Close()
		r.Write((&wire.Hello{MinVersion: 1, MaxVersion: 1, DeviceID: "dev-r", Token: tok}).Marshal())
		return r.read(t)
	}
	if typ, _ := hello(newTok); typ != wire.TypeError {
		t.Fatal("a token of a key not held yet was accepted")
	}
	if err := ts.SetTokenKeys([][]byte{newKey, ts.tokenKey}); err != nil {
		t.Fatal(err)
	}
	for name, tok := range map[string]string{"old": oldTok, "new": newTok} {
		if typ, body := hello(tok); typ != wire.TypeWelcome {
			t.Errorf("during the overlap, the %s key's token: frame 0x%02x %q, want WELCOME", name, typ, body)
		}
	}
	ts.SetTokenKeys([][]byte{newKey})
	if typ, body := hello(oldTok); typ != wire.TypeError {
		t.Errorf("the retired key's token: frame 0x%02x, want ERROR", typ)
	} else if e, _ := wire.ParseError(body); e.Code != wire.CodeAuth {
		t.Errorf("the retired key's token: ERROR %d, want 3", e.Code)
	}
	if err := ts.SetTokenKeys([][]byte{[]byte("short")}); err == nil {
		t.Error("a 5-byte key was taken")
	}
}

func TestPayloadLimit(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, func(c *push.Config) { c.Auth = push.AuthNone; c.MaxPayload = 100 })
	if _, err := ts.Push("d", make([]byte, 101), time.Hour); !errors.Is(err, push.ErrPayloadTooLarge) {
		t.Errorf("101-byte payload with a 100-byte limit: %v, want ErrPayloadTooLarge", err)
	}
}

// TestConnectionLimit: at push.max_connections the next agent completes
// TLS and HELLO and is told ERROR 5 (overloaded), as PROTOCOL.md says.
func TestConnectionLimit(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, func(c *push.Config) { c.Auth = push.AuthNone; c.MaxConnections = 1 })
	r := dialRaw(t, ts, nil)
	r.hello(t, "first")
	second := dialRaw(t, ts, nil)
	second.Write((&wire.Hello{MinVersion: 1, MaxVersion: 1, DeviceID: "second"}).Marshal())
	if e := second.expectError(t); e.Code != wire.CodeOverloaded {
		t.Errorf("second connection got ERROR %d %q, want %d (overloaded)", e.Code, e.Reason, wire.CodeOverloaded)
	}
}

// TestReplacedAgentBacksOff: when another connection takes the device id,
// the replaced agent waits at least half its maximum backoff, so two
// agents sharing an id do not replace each other in a tight loop.
func TestReplacedAgentBacksOff(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, func(c *push.Config) { c.Auth = push.AuthNone })
	a := startAgent(t, client.Config{Servers: []string{ts.addr}, DeviceID: "twin", TLS: ts.tlsFor(nil),
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 10 * time.Second})
	a.waitEvent(t, "connected")
	r := dialRaw(t, ts, nil)
	r.hello(t, "twin") // takes the id: the agent's connection is replaced
	e := a.waitEvent(t, "replaced")
	if e.Retry < 5*time.Second {
		t.Errorf("replaced agent retries after %v, want at least half of MaxBackoff (5s)", e.Retry)
	}
}

// TestPathStats: the device's status carries what its transport knows of
// the path (TCP_INFO for TLS, ConnectionStats for QUIC), and the sampler
// puts every session into the metrics.
func TestPathStats(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, func(c *push.Config) { c.Auth = push.AuthNone; c.PathInterval = 50 * time.Millisecond })
	for transport, source := range map[string]string{"tls": "tcp_info", "quic": "quic"} {
		addr := ts.addr
		if transport == "quic" {
			addr = ts.quicAddr
		}
		dev := "path-" + transport
		a := startAgent(t, client.Config{Servers: []string{addr}, DeviceID: dev, TLS: ts.tlsFor(nil), QUIC: transport == "quic"})
		a.waitEvent(t, "connected")
		ts.Push(dev, []byte("x"), time.Hour)
		a.next(t) // a round trip at least, so the RTT has a sample
		d, ok := ts.Device(dev)
		if !ok || d.Path == nil {
			t.Fatalf("%s: device %+v has no path figures", transport, d)
		}
		if p := d.Path; p.Source != source || p.Sent == 0 || p.RTT <= 0 || p.MinRTT <= 0 || p.MinRTT > p.RTT {
			t.Errorf("%s: path %+v, want source %s, packets sent, a positive RTT", transport, *p, source)
		}
		t.Logf("%s: %+v", transport, *d.Path)
		testutil.WaitFor(t, 10*time.Second, func() error {
			if n := ts.metric(t, "dpgate_push_path_sampled_sessions", "transport="+transport); n != 1 {
				return fmt.Errorf("%s sessions sampled: %v, want 1", transport, n)
			}
			if n := ts.metric(t, "dpgate_push_path_rtt_seconds", "transport="+transport); n < 1 {
				return fmt.Errorf("%s path RTT observations: %v, want at least 1", transport, n)
			}
			return nil
		})
	}
}

// TestLateCopyOfAnAcknowledgedPush: a copy committed while the ACK for
// its id arrives (from another node) must not stay queued: whichever of
// the two comes second sees the other.
func TestLateCopyOfAnAcknowledgedPush(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, func(c *push.Config) { c.Auth = push.AuthNone })
	const rounds = 300
	var wg sync.WaitGroup
	for i := range rounds {
		it := queue.Item{Device: fmt.Sprintf("late-%d", i%10), Message: wire.Message{Expiry: time.Now().Add(time.Hour).UnixMilli(), Payload: []byte("x")}}
		it.ID[0], it.ID[1] = byte(i), byte(i>>8)
		wg.Add(2)
		go func() {
			defer wg.Done()
			if _, err := ts.Insert([]queue.Item{it}); err != nil {
				t.Error(err)
			}
		}()
		go func() {
			defer wg.Done()
			if err := ts.Remove(it.Device, [][16]byte{it.ID}, true); err != nil {
				t.Error(err)
			}
		}()
		if i%20 == 19 {
			wg.Wait()
		}
	}
	wg.Wait()
	left := 0
	for i := range 10 {
		if d, ok := ts.Device(fmt.Sprintf("late-%d", i)); ok {
			left += d.Queued
		}
	}
	if left != 0 {
		t.Errorf("%d of %d acknowledged pushes still queued", left, rounds)
	}
}

// TestPushMetrics: pushes accepted, written and acknowledged reach the
// metrics with their durations; the sessions gauge follows connects,
// replacements and disconnects; the queue depth is the store's.
func TestPushMetrics(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, func(c *push.Config) { c.Auth = push.AuthNone })
	if n := ts.metric(t, "dpgate_push_sessions"); n != 0 {
		t.Fatalf("sessions at start: %v", n)
	}
	a := startAgent(t, client.Config{Servers: []string{ts.addr}, DeviceID: "counted", TLS: ts.tlsFor(nil)})
	a.waitEvent(t, "connected")
	for i := range 5 {
		ts.Push("counted", []byte(fmt.Sprint(i)), time.Hour)
		a.next(t)
	}
	ts.Push("offline", []byte("x"), time.Hour)
	testutil.WaitFor(t, 10*time.Second, func() error {
		if s, d := ts.metric(t, "dpgate_push_sent_total"), ts.metric(t, "dpgate_push_delivered_total"); s != 5 || d != 5 {
			return fmt.Errorf("counted %v sent, %v delivered; want 5 and 5", s, d)
		}
		if n := ts.metric(t, "dpgate_push_ack_duration_seconds"); n < 1 {
			return fmt.Errorf("%v ACKs timed, want at least 1", n)
		}
		return nil
	})
	for name, want := range map[string]float64{
		"dpgate_push_accepted_total":           6,
		"dpgate_push_publish_duration_seconds": 6,
		"dpgate_push_queued_messages":          1,
		"dpgate_push_queued_devices":           1,
		"dpgate_push_sessions":                 1,
		"dpgate_push_sessions_started_total":   1,
	} {
		if n := ts.metric(t, name); n != want {
			t.Errorf("%s = %v, want %v", name, n, want)
		}
	}
	// The same device again replaces the session: still one.
	b := dialRaw(t, ts, nil)
	b.hello(t, "counted")
	if n := ts.metric(t, "dpgate_push_sessions", "transport=tls"); n != 1 {
		t.Errorf("sessions after a replacement: %v, want 1", n)
	}
	a.cancel()
	<-a.done
	b.Close()
	testutil.WaitFor(t, 10*time.Second, func() error {
		if n := ts.metric(t, "dpgate_push_sessions"); n != 0 {
			return fmt.Errorf("sessions after both left: %v, want 0", n)
		}
		return nil
	})
}

// TestSourceRateKeepsAgentsPrompt: two hosts flood the push port with
// connections while a real agent connects from a third address. The flood
// is refused per source before it reaches the accept budget, so the agent
// is not queued behind it. Without the per-source limit each flood
// connection takes a token of the (here small) accept budget and the
// agent waits minutes behind thousands of them.
func TestSourceRateKeepsAgentsPrompt(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, func(c *push.Config) {
		c.Auth = push.AuthNone
		c.AcceptRate = 20 // small, so a queue behind the flood is long
		c.SourceRate = 2
	})
	ctx, stop := context.WithTimeout(context.Background(), 30*time.Second)
	defer stop()
	var flood sync.WaitGroup
	var dialed atomic.Int64
	for _, src := range []string{"127.0.0.2", "127.0.0.3"} {
		for range 8 {
			flood.Add(1)
			go func() {
				defer flood.Done()
				d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: time.Second}
				for i := 0; i < 5000 && ctx.Err() == nil; i++ {
					if c, err := d.DialContext(ctx, "tcp", ts.addr); err == nil {
						dialed.Add(1)
						c.Close()
					}
				}
			}()
		}
	}
	testutil.WaitFor(t, 10*time.Second, func() error {
		if n := dialed.Load(); n < 500 {
			return fmt.Errorf("only %d flood connections so far", n)
		}
		return nil
	})
	start := time.Now()
	a := startAgent(t, client.Config{Servers: []string{ts.addr}, DeviceID: "real-agent", TLS: ts.tlsFor(nil)})
	a.waitEvent(t, "connected")
	took := time.Since(start)
	flooding := ctx.Err() == nil
	stop()
	flood.Wait()
	refused := ts.metric(t, "dpgate_push_refused_connections_total", "reason=source_rate")
	t.Logf("agent connected in %v during a flood of %d connections from 2 sources, %.0f refused over the source rate", took.Round(time.Millisecond), dialed.Load(), refused)
	if !flooding {
		t.Error("the flood had ended before the agent connected")
	}
	if refused == 0 {
		t.Error("no flood connection was refused over push.source_rate")
	}
}

// TestAgentStoppedSaysSo: an agent stopped by its caller (the reference
// agent's Ctrl-C or SIGTERM) reports its disconnect as that, not as the
// error its own closing caused: the reference agent printed "use of
// closed network connection" over TLS and "Application error 0x0
// (local)" over QUIC.
func TestAgentStoppedSaysSo(t *testing.T) {
	t.Parallel()
	for _, transport := range []string{"tls", "quic"} {
		t.Run(transport, func(t *testing.T) {
			t.Parallel()
			ts := newTestServer(t, nil)
			cert := ts.agentCert(t, "dev-stop")
			addr := ts.addr
			if transport == "quic" {
				addr = ts.quicAddr
			}
			a := startAgent(t, client.Config{Servers: []string{addr}, DeviceID: "dev-stop", TLS: ts.tlsFor(&cert), QUIC: transport == "quic"})
			a.waitEvent(t, "connected")
			a.cancel()
			<-a.done
			e := a.waitEvent(t, "disconnected")
			if !errors.Is(e.Err, client.ErrStopped) {
				t.Errorf("disconnected after the agent was stopped: %v, want client.ErrStopped", e.Err)
			}
		})
	}
}
