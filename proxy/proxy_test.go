package proxy

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dpgate/dpgate/internal/testutil"
	"github.com/dpgate/dpgate/tlsconf"
)

func TestRelayAndPins(t *testing.T) {
	b := newBackend(t, nil, nil)
	other := identity(t, t.TempDir(), "other")
	tests := []struct {
		name string
		pins tlsconf.PinSet
		ok   bool
	}{
		{"pin matches", pinsOf(t, b.id), true},
		{"rotation: wrong and right pin", append(pinsOf(t, other), pinsOf(t, b.id)...), true},
		{"pin mismatch", pinsOf(t, other), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newTestProxy(t, Config{Upstreams: []UpstreamConfig{{Address: b.addr(), Pins: tt.pins}}})
			got, err := echoOnce(p.addr, agentConfig(t, p.id, nil), "hello central")
			if tt.ok && (err != nil || got != "hello central") {
				t.Fatalf("echo = %q, %v; want %q", got, err, "hello central")
			}
			if tt.ok { // the relayed connection's TCP_INFO was sampled
				waitFor(t, 10*time.Second, func() error {
					if st := p.Status().Upstreams[0]; st.TCPSamples != 1 || st.TCPRTTMillis <= 0 {
						return fmt.Errorf("upstream status %+v, want one TCP_INFO sample with an RTT", st)
					}
					return nil
				})
			}
			if !tt.ok {
				if got != "" {
					t.Errorf("relayed %q to an upstream with the wrong key", got)
				}
				st := p.Status().Upstreams[0]
				if st.Failures == 0 || !strings.Contains(st.LastError, "matches no configured pin") {
					t.Errorf("upstream status %+v, want a pin failure recorded", st)
				}
			}
		})
	}
}

// TestUpstreamVerifiedWithoutPins: with no pin, the chain and host name
// are checked (here against a test root instead of the system roots).
func TestUpstreamVerifiedWithoutPins(t *testing.T) {
	ca, _ := tlsconf.Issue(tlsconf.Template{CommonName: "test root", CA: true}, nil)
	leaf, _ := tlsconf.Issue(tlsconf.Template{CommonName: "central", DNSNames: []string{"localhost"}}, &ca)
	leaf.Certificate = append(leaf.Certificate, ca.Certificate...)
	b := newBackend(t, func(c *tls.Config) {
		c.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &leaf, nil }
	}, nil)
	roots := x509.NewCertPool()
	roots.AddCert(ca.Leaf)
	_, port, _ := net.SplitHostPort(b.addr())

	good := newTestProxy(t, Config{Upstreams: []UpstreamConfig{{Address: "localhost:" + port, RootCAs: roots}}})
	if got, err := echoOnce(good.addr, agentConfig(t, good.id, nil), "x"); err != nil || got != "x" {
		t.Errorf("verified upstream: echo %q, %v", got, err)
	}
	// 127.0.0.1 is not a name in the certificate: refused.
	bad := newTestProxy(t, Config{Upstreams: []UpstreamConfig{{Address: "127.0.0.1:" + port, RootCAs: roots}}})
	if got, _ := echoOnce(bad.addr, agentConfig(t, bad.id, nil), "x"); got != "" {
		t.Errorf("host name mismatch was relayed: %q", got)
	}
	if s := bad.Status().Upstreams[0]; !strings.Contains(s.LastError, "127.0.0.1") {
		t.Errorf("last error %q, want a host name verification error", s.LastError)
	}
}

// TestUpstreamClientCertificate: the proxy presents a PKCS#12 client
// certificate to an upstream that requires one.
func TestUpstreamClientCertificate(t *testing.T) {
	client, _ := tlsconf.Issue(tlsconf.Template{CommonName: "gateway-client", Client: true}, nil)
	pfx, _ := tlsconf.EncodePFX(client, nil, "pw")
	loaded, err := tlsconf.ParsePFX(pfx, "pw")
	if err != nil {
		t.Fatal(err)
	}
	var seen sync.Map
	b := newBackend(t, func(c *tls.Config) { c.ClientAuth = tls.RequireAnyClientCert }, func(c *tls.Conn) {
		seen.Store(c.ConnectionState().PeerCertificates[0].Subject.CommonName, true)
		io.Copy(c, c)
		c.CloseWrite()
	})
	with := b.upstream(t)
	with.ClientCert = &loaded
	p := newTestProxy(t, Config{Upstreams: []UpstreamConfig{with}})
	if got, err := echoOnce(p.addr, agentConfig(t, p.id, nil), "mtls"); err != nil || got != "mtls" {
		t.Fatalf("with client certificate: echo %q, %v", got, err)
	}
	if _, ok := seen.Load("gateway-client"); !ok {
		t.Error("upstream did not see the gateway's client certificate")
	}
	without := newTestProxy(t, Config{Upstreams: []UpstreamConfig{b.upstream(t)}})
	if got, _ := echoOnce(without.addr, agentConfig(t, without.id, nil), "mtls"); got != "" {
		t.Errorf("without client certificate the upstream still relayed %q", got)
	}
}

func TestAgentCertificates(t *testing.T) {
	b := newBackend(t, nil, nil)
	allow, err := tlsconf.NewAllowList(openStore(t))
	if err != nil {
		t.Fatal(err)
	}
	known, _ := tlsconf.Issue(tlsconf.Template{CommonName: "dev-known", Client: true}, nil)
	unknown, _ := tlsconf.Issue(tlsconf.Template{CommonName: "dev-unknown", Client: true}, nil)
	allow.Add(known.Leaf)
	var log testutil.Buffer
	p := newTestProxy(t, Config{Upstreams: []UpstreamConfig{b.upstream(t)}, AllowList: allow, Logger: log.Logger(slog.LevelInfo)})

	cache := tls.NewLRUClientSessionCache(8)
	knownCfg := agentConfig(t, p.id, &known)
	knownCfg.ClientSessionCache = cache
	if got, err := echoOnce(p.addr, knownCfg, "a"); err != nil || got != "a" {
		t.Fatalf("allowed agent: echo %q, %v", got, err)
	}
	if got, _ := echoOnce(p.addr, agentConfig(t, p.id, &unknown), "b"); got != "" {
		t.Errorf("unknown agent was relayed: %q", got)
	}
	if got, _ := echoOnce(p.addr, agentConfig(t, p.id, nil), "c"); got != "" {
		t.Errorf("agent without certificate was relayed: %q", got)
	}
	// Deleted while the gateway runs: refused at the next handshake, even
	// though the agent resumes its session.
	allow.Remove(tlsconf.Fingerprint(known.Leaf))
	if got, _ := echoOnce(p.addr, knownCfg, "d"); got != "" {
		t.Errorf("deleted agent was relayed: %q", got)
	}
	waitFor(t, 5*time.Second, func() error {
		if n := testutil.Metric(t, p.reg, "dpgate_proxy_handshake_failures_total"); n < 3 {
			return fmt.Errorf("%v failed handshakes counted, want 3", n)
		}
		return nil
	})
	// Two certificates refused, one line: a host presenting foreign
	// certificates used to write one per handshake.
	if n := log.Count("agent certificate refused"); n != 1 {
		t.Errorf("2 certificates refused: %d log lines, want 1 (once in 10 s):\n%s", n, log.String())
	}
}

func TestFailover(t *testing.T) {
	good := newBackend(t, nil, nil)
	down, _ := net.Listen("tcp", "127.0.0.1:0")
	downAddr := down.Addr().String()
	down.Close() // nothing listens here now
	hang, _ := net.Listen("tcp", "127.0.0.1:0")
	defer hang.Close()
	go func() { // accepts TCP and never answers TLS
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := hang.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	for _, tc := range []struct{ name, first string }{{"first down", downAddr}, {"first hangs", hang.Addr().String()}} {
		t.Run(tc.name, func(t *testing.T) {
			p := newTestProxy(t, Config{
				Balance:           Ordered,
				ConnectionTimeout: 300 * time.Millisecond,
				Upstreams:         []UpstreamConfig{{Address: tc.first, Pins: pinsOf(t, good.id)}, good.upstream(t)},
			})
			for i := range 3 {
				msg := fmt.Sprintf("m%d", i)
				if got, err := echoOnce(p.addr, agentConfig(t, p.id, nil), msg); err != nil || got != msg {
					t.Fatalf("connection %d: echo %q, %v; want %q via the second upstream", i, got, err, msg)
				}
			}
			st := p.Status().Upstreams
			if st[0].Failures == 0 || st[1].Relays != 3 {
				t.Errorf("first upstream %d failures, second %d relays; want failures and 3 relays", st[0].Failures, st[1].Relays)
			}
		})
	}
}

func TestEjectionAndReadiness(t *testing.T) {
	down, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := down.Addr().String()
	down.Close()
	p := newTestProxy(t, Config{
		Upstreams:      []UpstreamConfig{{Address: addr, Pins: pinsOf(t, identity(t, t.TempDir(), "x"))}},
		EjectAfter:     2,
		EjectBackoff:   time.Hour,
		HealthInterval: 20 * time.Millisecond,
	})
	waitFor(t, 10*time.Second, func() error {
		if s := p.Status().Upstreams[0]; s.State != "ejected" {
			return fmt.Errorf("upstream state %s after %d failures, want ejected", s.State, s.ConsecutiveFailures)
		}
		return nil
	})
	if p.Ready() {
		t.Error("Ready with every upstream ejected, want not ready")
	}
	// An agent that came then is counted: no upstream took it.
	if got, err := echoOnce(p.addr, agentConfig(t, p.id, nil), "z"); err == nil && got != "" {
		t.Errorf("relayed %q with no upstream up", got)
	}
	waitFor(t, 10*time.Second, func() error {
		if n := p.Status().NoUpstream; n != 1 {
			return fmt.Errorf("%d agents without an upstream in Status, want 1", n)
		}
		return nil
	})
}

func TestBackAfterEjection(t *testing.T) {
	b := newBackend(t, nil, nil)
	p := newTestProxy(t, Config{Upstreams: []UpstreamConfig{b.upstream(t)}, EjectAfter: 1, EjectBackoff: time.Hour})
	u := p.upstreams()[0]
	u.failed(errors.New("synthetic"), time.Now(), 1, time.Hour)
	if p.Ready() {
		t.Fatal("Ready after ejection")
	}
	// An ejected upstream is still tried as a last resort; success restores it.
	if got, err := echoOnce(p.addr, agentConfig(t, p.id, nil), "z"); err != nil || got != "z" {
		t.Fatalf("echo via the ejected-but-working upstream: %q, %v", got, err)
	}
	if !p.Ready() {
		t.Error("not Ready after a successful relay through the upstream")
	}
}

// TestLeastBusySpread holds 300 relays open at once and checks that
// each of 3 upstreams has 100 ± 10 % (each relay costs two handshakes,
// about 10 ms under the race detector: 300 are enough to see a spread).
func TestLeastBusySpread(t *testing.T) {
	t.Parallel() // its own backends; CPU-bound, beside the tests that wait
	const relays, n = 300, 3
	release := make(chan struct{})
	hold := func(c *tls.Conn) {
		io.WriteString(c, "+")
		<-release
	}
	var ups []UpstreamConfig
	var backends []*backend
	for range n {
		b := newBackend(t, nil, hold)
		backends = append(backends, b)
		ups = append(ups, b.upstream(t))
	}
	defer close(release) // before the backends' cleanup waits for their handlers
	p := newTestProxy(t, Config{Upstreams: ups})
	cfg := agentConfig(t, p.id, nil)
	cfg.ClientSessionCache = tls.NewLRUClientSessionCache(1)
	conns := make([]*tls.Conn, 0, relays)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := range relays {
		c, err := dialAgent(p.addr, cfg)
		if err != nil {
			t.Fatalf("relay %d: %v", i, err)
		}
		conns = append(conns, c)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 1)
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatalf("relay %d: no byte from the upstream: %v", i, err)
		}
	}
	for i, b := range backends {
		got := b.open.Load()
		if want := int64(relays / n); got < want*9/10 || got > want*11/10 {
			t.Errorf("upstream %d holds %d relays, want %d ± 10 %%", i, got, want)
		}
	}
}

func TestOrderedUsesFirstHealthy(t *testing.T) {
	a, b := newBackend(t, nil, nil), newBackend(t, nil, nil)
	p := newTestProxy(t, Config{Balance: Ordered, Upstreams: []UpstreamConfig{a.upstream(t), b.upstream(t)}})
	for range 5 {
		echoOnce(p.addr, agentConfig(t, p.id, nil), "o")
	}
	if a.accepted.Load() < 5 || p.Status().Upstreams[1].Relays != 0 {
		t.Errorf("ordered: first got %d connections, second %d relays; want all on the first", a.accepted.Load(), p.Status().Upstreams[1].Relays)
	}
}

// TestChained: agent -> gateway A -> gateway B -> central.
func TestChained(t *testing.T) {
	central := newBackend(t, nil, nil)
	b := newTestProxy(t, Config{Upstreams: []UpstreamConfig{central.upstream(t)}})
	a := newTestProxy(t, Config{Upstreams: []UpstreamConfig{{Address: b.addr, Pins: pinsOf(t, b.id)}}})
	if got, err := echoOnce(a.addr, agentConfig(t, a.id, nil), "through two gateways"); err != nil || got != "through two gateways" {
		t.Fatalf("chained echo %q, %v", got, err)
	}
}

// TestLargeTransferByteExact relays 64 MiB (4,096 TLS records of 16 KiB,
// thousands of reads and writes on each side) from the agent; both ends
// hash what they sent and received. The upstream answers with its digest
// after the agent's half-close, so this also exercises half-close under
// load. (A 1 GiB relay, byte-exact through the real binary during an
// upgrade, is cmd/dpgate's TestUpgradeDropsNothing; here, under -race,
// 256 MiB took 4 s of CPU and 1 GiB 18 s.)
func TestLargeTransferByteExact(t *testing.T) {
	const size = 64 << 20
	b := newBackend(t, nil, func(c *tls.Conn) {
		h := sha256.New()
		n, _ := io.Copy(h, c)
		fmt.Fprintf(c, "%d %x", n, h.Sum(nil))
		c.CloseWrite()
	})
	p := newTestProxy(t, Config{Upstreams: []UpstreamConfig{b.upstream(t)}})
	c := mustDial(t, p)
	c.SetDeadline(time.Now().Add(10 * time.Minute))
	h := sha256.New()
	src := io.TeeReader(io.LimitReader(testutil.Pseudorandom(), size), h)
	w := bufio.NewWriterSize(c, 64<<10)
	if _, err := io.Copy(w, src); err != nil {
		t.Fatal(err)
	}
	w.Flush()
	c.CloseWrite()
	reply, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("%d %x", size, h.Sum(nil))
	if string(reply) != want {
		t.Fatalf("upstream received %q, agent sent %q", reply, want)
	}
}

// TestHalfClose: the upstream keeps talking after the agent finished
// sending, and the agent keeps reading.
func TestHalfClose(t *testing.T) {
	b := newBackend(t, nil, func(c *tls.Conn) {
		req, _ := io.ReadAll(c) // until the agent's half-close
		for i := range 100 {
			fmt.Fprintf(c, "line %d for %s\n", i, req)
		}
		c.CloseWrite()
	})
	p := newTestProxy(t, Config{Upstreams: []UpstreamConfig{b.upstream(t)}})
	c := mustDial(t, p)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "req")
	c.CloseWrite()
	out, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if lines := strings.Count(string(out), "for req\n"); lines != 100 {
		t.Errorf("read %d lines after the half-close, want 100", lines)
	}
}

func TestIdleTimeout(t *testing.T) {
	t.Parallel() // waits for the idle timeout
	b := newBackend(t, nil, nil)
	p := newTestProxy(t, Config{Upstreams: []UpstreamConfig{b.upstream(t)}, IdleTimeout: 300 * time.Millisecond})

	idle := mustDial(t, p)
	busy := mustDial(t, p)

	// The busy relay sends one way only, every 50 ms, for 5 idle periods;
	// the upstream echoes, so both ways see traffic but never for long.
	busyErr := make(chan error, 1)
	go func() {
		buf := make([]byte, 1)
		for range 30 {
			busy.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := busy.Write([]byte("x")); err != nil {
				busyErr <- err
				return
			}
			if _, err := io.ReadFull(busy, buf); err != nil {
				busyErr <- err
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		busyErr <- nil
	}()

	idle.SetReadDeadline(time.Now().Add(30 * time.Second))
	_, err := idle.Read(make([]byte, 1))
	if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("idle relay: read returned %v, want the proxy to have closed it", err)
	}
	if err := <-busyErr; err != nil {
		t.Errorf("busy relay was cut: %v", err)
	}
	waitFor(t, 5*time.Second, func() error {
		if n := testutil.Metric(t, p.reg, "dpgate_proxy_relays_ended_total"); n < 1 {
			return errors.New("no relay end counted")
		}
		return nil
	})
}

// TestNoGoroutineGrowth runs 500 short relays and checks that the
// goroutine count returns to where it started (a leak of one goroutine
// per relay shows as hundreds; 10,000 relays took most of the package's
// time).
func TestNoGoroutineGrowth(t *testing.T) {
	b := newBackend(t, nil, nil)
	p := newTestProxy(t, Config{Upstreams: []UpstreamConfig{b.upstream(t)}})
	cfg := agentConfig(t, p.id, nil)
	cfg.ClientSessionCache = tls.NewLRUClientSessionCache(64)
	echoOnce(p.addr, cfg, "warm-up")
	waitFor(t, 10*time.Second, func() error {
		if n := p.conns.Load(); n != 0 {
			return fmt.Errorf("%d connections still open", n)
		}
		return nil
	})
	base := runtime.NumGoroutine()

	const total, workers = 500, 8
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < total; i += workers {
				msg := fmt.Sprintf("r%d", i)
				if got, err := echoOnce(p.addr, cfg, msg); err != nil || got != msg {
					errs <- fmt.Errorf("relay %d: echo %q, %v", i, got, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, func() error {
		if n := runtime.NumGoroutine(); n > base+2 {
			return fmt.Errorf("%d goroutines after %d relays, %d before", n, total, base)
		}
		return nil
	})
	if got := b.accepted.Load(); got < total {
		t.Errorf("upstream saw %d connections, want at least %d", got, total)
	}
}

func TestConnectionLimits(t *testing.T) {
	release := make(chan struct{})
	b := newBackend(t, nil, func(c *tls.Conn) { io.WriteString(c, "+"); <-release })
	defer close(release)
	p := newTestProxy(t, Config{Upstreams: []UpstreamConfig{b.upstream(t)}, MaxConnections: 2})
	var held []*tls.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for range 2 {
		c, err := dialAgent(p.addr, agentConfig(t, p.id, nil))
		if err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		io.ReadFull(c, make([]byte, 1))
		held = append(held, c)
	}
	if _, err := echoOnce(p.addr, agentConfig(t, p.id, nil), "third"); err == nil {
		t.Error("third connection accepted with max_connections 2")
	}
	if p.Status().Refused != 1 {
		t.Errorf("refused %d, want 1", p.Status().Refused)
	}
}

// TestStalledHandshakesMakeRoom: connections that never finish their TLS
// handshake (a slowloris: TCP open, nothing sent) cannot keep agents
// out at proxy.max_connections: a new connection closes the oldest
// one in its handshake for over a second and takes its place. Before,
// every agent was refused until the stalled ones timed out, and a flood
// that went on kept them out. Relays are never closed to make room.
func TestStalledHandshakesMakeRoom(t *testing.T) {
	release := make(chan struct{})
	b := newBackend(t, nil, func(c *tls.Conn) { io.WriteString(c, "+"); <-release })
	var once sync.Once
	defer once.Do(func() { close(release) })
	p := newTestProxy(t, Config{Upstreams: []UpstreamConfig{b.upstream(t)}, MaxConnections: 3, HandshakeTimeout: time.Minute})
	relay, err := dialAgent(p.addr, agentConfig(t, p.id, nil))
	if err != nil {
		t.Fatal(err)
	}
	defer relay.Close()
	relay.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(relay, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	var stalled []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", p.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		stalled = append(stalled, c)
	}
	// Past a second, an agent's connection takes a stalled one's place.
	waitFor(t, 30*time.Second, func() error {
		c, err := dialAgent(p.addr, agentConfig(t, p.id, nil))
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err = io.ReadFull(c, make([]byte, 1))
		return err
	})
	evicted := testutil.Metric(t, p.reg, "dpgate_proxy_handshakes_evicted_total")
	if evicted < 1 {
		t.Errorf("dpgate_proxy_handshakes_evicted_total %v, want at least 1", evicted)
	}
	if n := testutil.Metric(t, p.reg, "dpgate_proxy_handshake_failures_total"); n != 0 {
		t.Errorf("dpgate_proxy_handshake_failures_total %v: a connection closed to make room is not a failed handshake", n)
	}
	relay.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if _, err := relay.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("the relay: %v, want it still open (relays are never closed to make room)", err)
	}
	for _, c := range stalled {
		c.Close()
	}
	relay.Close()
	once.Do(func() { close(release) }) // the upstream ends the relays
	waitFor(t, 20*time.Second, func() error {
		if n := testutil.Metric(t, p.reg, "dpgate_proxy_connections"); n != 0 {
			return fmt.Errorf("%v connections counted with none open", n)
		}
		return nil
	})
}

func TestSourceRateLimit(t *testing.T) {
	b := newBackend(t, nil, nil)
	p := newTestProxy(t, Config{Upstreams: []UpstreamConfig{b.upstream(t)}, SourceRate: 0.001}) // burst 1
	if _, err := echoOnce(p.addr, agentConfig(t, p.id, nil), "first"); err != nil {
		t.Fatalf("first connection: %v", err)
	}
	if _, err := echoOnce(p.addr, agentConfig(t, p.id, nil), "second"); err == nil {
		t.Error("second connection from the same address within the rate limit window was accepted")
	}
}

// TestIngressShaping: at 8 Mbit/s (1 MB/s), 3 MB cannot pass in less than
// (3 MB - burst) / rate. A lower bound only: a slow machine only makes it
// longer.
func TestIngressShaping(t *testing.T) {
	t.Parallel() // waits on the shaper (a lower bound only)
	b := newBackend(t, nil, func(c *tls.Conn) { io.Copy(io.Discard, c); io.WriteString(c, "done"); c.CloseWrite() })
	p := newTestProxy(t, Config{Upstreams: []UpstreamConfig{b.upstream(t)}, MaxIngressRate: 8e6})
	c := mustDial(t, p)
	c.SetDeadline(time.Now().Add(time.Minute))
	start := time.Now()
	io.Copy(c, io.LimitReader(testutil.Pseudorandom(), 3e6))
	c.CloseWrite()
	io.ReadAll(c)
	took := time.Since(start)
	minimum := time.Duration(float64(3e6-1e5) / 1e6 * float64(time.Second))
	if took < minimum {
		t.Errorf("3 MB passed a 1 MB/s shaper in %v, want at least %v", took, minimum)
	}
}

func TestProxyProtocolV2(t *testing.T) {
	id := identity(t, t.TempDir(), "central")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 4)
	testutil.Serve(t, ln, func(raw net.Conn) {
		br := bufio.NewReader(raw)
		h, err := proxyproto.Read(br)
		if err != nil {
			return // a health check without header
		}
		got <- h.SourceAddr.String()
		tc := tls.Server(&bufConn{Conn: raw, r: br}, tlsconf.ServerConfig(id, nil))
		io.Copy(tc, tc)
		tc.CloseWrite()
	})
	p := newTestProxy(t, Config{Upstreams: []UpstreamConfig{{Address: ln.Addr().String(), Pins: pinsOf(t, id)}}, ProxyProtocol: true, HealthInterval: time.Hour})
	c := mustDial(t, p)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "pp")
	buf := make([]byte, 2)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("echo through PROXY v2: %v", err)
	}
	select {
	case src := <-got:
		if src != c.LocalAddr().String() {
			t.Errorf("PROXY header source %s, want the agent's %s", src, c.LocalAddr())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("upstream got no PROXY header")
	}
}

type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufConn) Read(b []byte) (int, error) { return c.r.Read(b) }

func TestShutdownDrains(t *testing.T) {
	b := newBackend(t, nil, nil)
	p := newTestProxy(t, Config{Upstreams: []UpstreamConfig{b.upstream(t)}})
	c := openRelay(t, p)

	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		done <- p.Shutdown(ctx)
	}()
	// New agents are refused while the old relay still works.
	waitFor(t, 5*time.Second, func() error {
		probe, err := net.DialTimeout("tcp", p.addr, time.Second)
		if err == nil {
			// Closed at once: left open, the proxy would wait out its
			// handshake timeout for it before Shutdown returns.
			probe.Close()
			return errors.New("listener still accepts")
		}
		return nil
	})
	io.WriteString(c, "b")
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatalf("relay during drain: %v", err)
	}
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned %v while a relay was active", err)
	default:
	}
	c.CloseWrite()
	io.ReadAll(c)
	if err := <-done; err != nil {
		t.Errorf("Shutdown after the relay finished: %v, want nil", err)
	}
}

func TestShutdownDeadlineCutsRelays(t *testing.T) {
	b := newBackend(t, nil, nil)
	p := newTestProxy(t, Config{Upstreams: []UpstreamConfig{b.upstream(t)}})
	c := openRelay(t, p)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := p.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown with a stuck relay: %v, want DeadlineExceeded", err)
	}
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("relay still open after Shutdown's deadline")
	}
}

// TestKeyExchange: by default agents and upstreams get Go's hybrid
// post-quantum group; KeyExchange without it leaves it out on both sides.
func TestKeyExchange(t *testing.T) {
	for _, tc := range []struct {
		classic bool
		want    tls.CurveID
	}{{false, tls.X25519MLKEM768}, {true, tls.X25519}} {
		t.Run(tc.want.String(), func(t *testing.T) {
			upCurve := make(chan tls.CurveID, 1)
			b := newBackend(t, nil, func(c *tls.Conn) {
				upCurve <- c.ConnectionState().CurveID
				io.Copy(c, c)
				c.CloseWrite()
			})
			p := newTestProxy(t, Config{Upstreams: []UpstreamConfig{b.upstream(t)}, KeyExchange: tlsconf.KeyExchange(!tc.classic), HealthInterval: time.Hour})
			<-upCurve // the first health check
			c, err := dialAgent(p.addr, agentConfig(t, p.id, nil))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if got := c.ConnectionState().CurveID; got != tc.want {
				t.Errorf("agent side negotiated %v, want %v", got, tc.want)
			}
			c.SetDeadline(time.Now().Add(10 * time.Second))
			io.WriteString(c, "k")
			io.ReadFull(c, make([]byte, 1))
			if got := <-upCurve; got != tc.want {
				t.Errorf("upstream side negotiated %v, want %v", got, tc.want)
			}
		})
	}
}

// TestClientCertReload: a replaced upstream client certificate is
// presented from the next connection on.
func TestClientCertReload(t *testing.T) {
	seen := make(chan string, 4)
	b := newBackend(t, func(c *tls.Config) { c.ClientAuth = tls.RequireAnyClientCert }, func(c *tls.Conn) {
		seen <- c.ConnectionState().PeerCertificates[0].Subject.CommonName
		io.Copy(c, c)
		c.CloseWrite()
	})
	first, _ := tlsconf.Issue(tlsconf.Template{CommonName: "client-1", Client: true}, nil)
	second, _ := tlsconf.Issue(tlsconf.Template{CommonName: "client-2", Client: true}, nil)
	up := b.upstream(t)
	up.ClientCert = &first
	p := newTestProxy(t, Config{Upstreams: []UpstreamConfig{up}, HealthInterval: time.Hour})
	<-seen // the first health check
	echoOnce(p.addr, agentConfig(t, p.id, nil), "a")
	if cn := <-seen; cn != "client-1" {
		t.Fatalf("first certificate: upstream saw %q", cn)
	}
	if err := p.SetClientCert(0, &second); err != nil {
		t.Fatal(err)
	}
	echoOnce(p.addr, agentConfig(t, p.id, nil), "b")
	if cn := <-seen; cn != "client-2" {
		t.Errorf("after SetClientCert: upstream saw %q, want client-2", cn)
	}
}

// TestSetUpstreams: a reload's new list keeps the state of the upstreams
// it keeps (address and pins unchanged), starts new ones, and drops the
// removed ones; a relay goes to the new list at once.
func TestSetUpstreams(t *testing.T) {
	a := newBackend(t, nil, nil)
	b := newBackend(t, nil, nil)
	p := newTestProxy(t, Config{Upstreams: []UpstreamConfig{a.upstream(t), {Address: "127.0.0.1:1"}}, HealthInterval: time.Hour})
	kept := p.upstreams()[0]
	kept.relays.Add(7) // state that must survive the reload
	if err := p.SetUpstreams([]UpstreamConfig{a.upstream(t), b.upstream(t)}); err != nil {
		t.Fatal(err)
	}
	ups := p.upstreams()
	if len(ups) != 2 || ups[0] != kept || ups[0].relays.Load() != 7 || ups[1].addr != b.addr() {
		t.Fatalf("after the reload: %d upstreams, first kept %v, second %s", len(ups), ups[0] == kept, ups[len(ups)-1].addr)
	}
	for _, st := range p.Status().Upstreams {
		if st.Address == "127.0.0.1:1" {
			t.Error("the removed upstream is still listed")
		}
	}
	if err := p.SetUpstreams(nil); err == nil {
		t.Error("an empty list was taken")
	}
	// The proxy relays through the new list.
	if got, err := echoOnce(p.addr, agentConfig(t, p.id, nil), "after reload"); err != nil || got != "after reload" {
		t.Errorf("relay after the reload: %q, %v", got, err)
	}
}

// TestBytesCountedAsTheyFlow: the relayed bytes reach the metrics and the
// status while the relay is still open (before issue 16 they were added
// when it ended, so a day-long relay showed nothing for a day).
func TestBytesCountedAsTheyFlow(t *testing.T) {
	b := newBackend(t, nil, nil)
	p := newTestProxy(t, Config{Upstreams: []UpstreamConfig{b.upstream(t)}})
	c := openRelay(t, p) // one byte each way, the relay still open
	msg := strings.Repeat("x", 999)
	io.WriteString(c, msg)
	if _, err := io.ReadFull(c, make([]byte, len(msg))); err != nil {
		t.Fatal(err)
	}
	// A pipe counts right after its write returns: the echo can be read
	// a moment before that, so poll.
	testutil.WaitFor(t, 10*time.Second, func() error {
		in, out := testutil.Metric(t, p.reg, "dpgate_proxy_received_bytes_total"), testutil.Metric(t, p.reg, "dpgate_proxy_sent_bytes_total")
		if st := p.Status(); in != 1000 || out != 1000 || st.BytesIn != 1000 || st.BytesOut != 1000 {
			return fmt.Errorf("with the relay open: %v bytes in, %v out counted, status %d/%d; want 1000 each", in, out, st.BytesIn, st.BytesOut)
		}
		return nil
	})
}

// TestAcceptedAsItStopsIsRelayed: a connection the proxy accepted just as
// it stopped accepting (an upgrade hands the listener to the next
// process at that moment) is relayed, not closed unanswered (seen: "read:
// connection reset by peer" in TestUpgradeDropsNothing, 1 of 71 rounds).
func TestAcceptedAsItStopsIsRelayed(t *testing.T) {
	b := newBackend(t, nil, nil)
	id := identity(t, t.TempDir(), "gateway")
	p, err := New(Config{Identity: id, Upstreams: []UpstreamConfig{b.upstream(t)}, Registerer: prometheus.NewRegistry(), Logger: quietLogger(), SourceRate: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	late := testutil.NewLateListener(inner)
	served := make(chan error, 1)
	go func() { served <- p.Serve(late) }()
	echoed := make(chan error, 1)
	go func() {
		got, err := echoOnce(inner.Addr().String(), agentConfig(t, id, nil), "late")
		if err == nil && got != "late" {
			err = fmt.Errorf("echo %q, want %q", got, "late")
		}
		echoed <- err
	}()
	<-late.Accepted
	p.StopAccepting()
	if err := <-echoed; err != nil {
		t.Fatalf("a connection accepted as the proxy stopped accepting: %v", err)
	}
	if err := <-served; err != nil {
		t.Errorf("Serve: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := p.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown after the relay ended: %v", err)
	}
}

// TestAcceptFailuresLoggedSparingly: out of open files, accept fails
// again and again; each failure was a log line (some 8 in the first
// second of backing off, then one a second), now one in 10 s with how
// many it stands for. The metric counts each.
func TestAcceptFailuresLoggedSparingly(t *testing.T) {
	var log testutil.Buffer
	p := newTestProxy(t, Config{Upstreams: []UpstreamConfig{newBackend(t, nil, nil).upstream(t)}, Logger: log.Logger(slog.LevelInfo)})
	const failures = 6 // 5 ms doubling: 315 ms of backing off
	ln := testutil.FailingListener(failures)
	done := make(chan struct{})
	go func() { defer close(done); p.Serve(ln) }()
	testutil.WaitFor(t, 20*time.Second, ln.Failed)
	ln.Close()
	<-done
	if n := log.Count("accept failed"); n != 1 {
		t.Errorf("%d accept failures: %d log lines, want 1:\n%s", failures, n, log.String())
	}
	if n := testutil.Metric(t, p.reg, "dpgate_proxy_accept_errors_total"); n != failures {
		t.Errorf("%v accept errors counted, want %d", n, failures)
	}
}
