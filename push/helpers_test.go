package push_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/dpgate/dpgate/internal/store"
	"github.com/dpgate/dpgate/internal/testutil"
	"github.com/dpgate/dpgate/push"
	"github.com/dpgate/dpgate/push/client"
	"github.com/dpgate/dpgate/push/queue"
	"github.com/dpgate/dpgate/push/wire"
	"github.com/dpgate/dpgate/tlsconf"
	"github.com/prometheus/client_golang/prometheus"
)

// testServer is a push server on TLS and QUIC listeners on 127.0.0.1.
type testServer struct {
	*push.Server
	addr, quicAddr string
	id             *tlsconf.Identity
	allow          *tlsconf.AllowList
	queue          *queue.Queue
	ca             tls.Certificate
	tokenKey       []byte
	metrics        *prometheus.Registry
}

// newTestServer starts a server of the test's own: its store, ports and
// metrics registry. So every test of this package runs in parallel: most
// of their time is waiting on timers (keepalives, write timeouts, QUIC's
// handshake timeout), 21 s one after another on two cores.
func newTestServer(t testing.TB, tweak func(*push.Config)) *testServer {
	t.Helper()
	dir := t.TempDir()
	db, err := store.Open(dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	gw, _ := tlsconf.Issue(tlsconf.Template{CommonName: "gateway"}, nil)
	tlsconf.WriteKeyPair(gw, filepath.Join(dir, "gw.pem"), "")
	id, err := tlsconf.LoadIdentity(filepath.Join(dir, "gw.pem"), "")
	if err != nil {
		t.Fatal(err)
	}
	allow, _ := tlsconf.NewAllowList(db)
	reg, err := queue.NewRegistry(db)
	if err != nil {
		t.Fatal(err)
	}
	metrics := prometheus.NewRegistry()
	q, err := queue.NewQueue(db)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() }) // after the server's Close, before the store's
	ts := &testServer{id: id, allow: allow, queue: q, tokenKey: []byte("0123456789abcdef0123456789abcdef"), metrics: metrics}
	ts.ca, _ = tlsconf.Issue(tlsconf.Template{CommonName: "agent CA", CA: true}, nil)
	cfg := push.Config{
		Identity: id, AllowList: allow, Queue: ts.queue, Registry: reg, TokenKeys: [][]byte{ts.tokenKey},
		Keepalive: 2 * time.Second, Registerer: metrics,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	if tweak != nil {
		tweak(&cfg)
	}
	s, err := push.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ts.Server = s
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts.addr, ts.quicAddr = ln.Addr().String(), pc.LocalAddr().String()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); s.Serve(ln) }()
	go func() { defer wg.Done(); s.ServeQUIC(pc) }()
	t.Cleanup(func() { s.Close(); wg.Wait(); pc.Close() })
	return ts
}

// agentCert issues and allows a certificate for device.
func (ts *testServer) agentCert(t *testing.T, device string) tls.Certificate {
	c, err := tlsconf.Issue(tlsconf.Template{CommonName: device, Client: true}, &ts.ca)
	if err != nil {
		t.Fatal(err)
	}
	ts.allow.Add(c.Leaf)
	return c
}

func (ts *testServer) tlsFor(cert *tls.Certificate) *tls.Config {
	pins, _ := tlsconf.ParsePins([]string{ts.id.Pin()})
	cfg := tlsconf.PinnedClientConfig(pins, "gateway")
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return cfg
}

// agent is a running client.Client with its pushes in a channel.
type agent struct {
	*client.Client
	pushes chan wire.Message
	events chan client.Event
	cancel context.CancelFunc
	done   chan struct{}
}

func startAgent(t testing.TB, cfg client.Config) *agent {
	t.Helper()
	a := &agent{pushes: make(chan wire.Message, 10000), events: make(chan client.Event, 1000), done: make(chan struct{})}
	cfg.OnPush = func(m wire.Message) { a.pushes <- m }
	cfg.OnEvent = func(e client.Event) {
		select {
		case a.events <- e:
		default:
		}
	}
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff, cfg.MaxBackoff = 20*time.Millisecond, 200*time.Millisecond
	}
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	c, err := client.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	a.Client = c
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	go func() { defer close(a.done); c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-a.done })
	return a
}

// waitEvent waits for an event of kind and returns it.
func (a *agent) waitEvent(t testing.TB, kind string) client.Event {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case e := <-a.events:
			if e.Kind == kind {
				return e
			}
		case <-timeout:
			t.Fatalf("no %q event within 20s", kind)
		}
	}
}

// next returns the next push, failing after a generous timeout.
func (a *agent) next(t *testing.T) wire.Message {
	t.Helper()
	select {
	case m := <-a.pushes:
		return m
	case <-time.After(20 * time.Second):
		t.Fatal("no push within 20s")
	}
	return wire.Message{}
}

// rawConn is a hand-driven protocol connection for misbehaving agents.
type rawConn struct {
	*tls.Conn
	hdr [wire.HeaderSize]byte
}

func dialRaw(t *testing.T, ts *testServer, cert *tls.Certificate) *rawConn {
	t.Helper()
	cfg := ts.tlsFor(cert)
	cfg.NextProtos = []string{wire.ALPN}
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", ts.addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	return &rawConn{Conn: c}
}

func (r *rawConn) hello(t *testing.T, device string) wire.Welcome {
	t.Helper()
	h := wire.Hello{MinVersion: 1, MaxVersion: 1, DeviceID: device}
	r.Write(h.Marshal())
	typ, body := r.read(t)
	if typ != wire.TypeWelcome {
		t.Fatalf("after HELLO got frame 0x%02x %q, want WELCOME", typ, body)
	}
	w, err := wire.ParseWelcome(body)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func (r *rawConn) read(t *testing.T) (byte, []byte) {
	t.Helper()
	typ, body, err := wire.ReadFrame(r, &r.hdr, nil, wire.MaxFrame)
	if err != nil {
		t.Fatalf("reading a frame: %v", err)
	}
	return typ, body
}

// expectError reads until an ERROR frame and returns its code.
func (r *rawConn) expectError(t *testing.T) wire.ErrorFrame {
	t.Helper()
	for {
		typ, body, err := wire.ReadFrame(r, &r.hdr, nil, wire.MaxFrame)
		if err != nil {
			t.Fatalf("connection ended without an ERROR frame: %v", err)
		}
		if typ == wire.TypeError {
			e, err := wire.ParseError(body)
			if err != nil {
				t.Fatal(err)
			}
			return e
		}
	}
}

func payloads(n int, prefix string) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%d", prefix, i)
	}
	return out
}

// waitFor is testutil.WaitFor under the short name these tests use.
var waitFor = testutil.WaitFor

// metric reads a series of the server's metrics (testutil.Metric).
func (ts *testServer) metric(t testing.TB, name string, match ...string) float64 {
	t.Helper()
	return testutil.Metric(t, ts.metrics, name, match...)
}
