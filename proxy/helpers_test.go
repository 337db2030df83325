package proxy

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dpgate/dpgate/internal/store"
	"github.com/dpgate/dpgate/internal/testutil"
	"github.com/dpgate/dpgate/tlsconf"
	"github.com/prometheus/client_golang/prometheus"
)

var quietLogger = testutil.Quiet

// identity writes a fresh certificate into dir and loads it.
func identity(t testing.TB, dir, cn string) *tlsconf.Identity {
	t.Helper()
	c, err := tlsconf.Issue(tlsconf.Template{CommonName: cn, DNSNames: []string{cn, "localhost"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(dir, cn+".pem")
	if err := tlsconf.WriteKeyPair(c, f, ""); err != nil {
		t.Fatal(err)
	}
	id, err := tlsconf.LoadIdentity(f, "")
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func pinsOf(t testing.TB, id *tlsconf.Identity) tlsconf.PinSet {
	set, err := tlsconf.ParsePins([]string{id.Pin()})
	if err != nil {
		t.Fatal(err)
	}
	return set
}

// backend is a TLS upstream ("central server") for tests.
type backend struct {
	ln       net.Listener
	id       *tlsconf.Identity
	accepted atomic.Int64
	open     atomic.Int64
	handler  func(c *tls.Conn)
	wg       sync.WaitGroup
}

func (b *backend) addr() string { return b.ln.Addr().String() }

// newBackend serves TLS with its own certificate; handler runs per
// connection after the handshake (default: echo until EOF, then close).
func newBackend(t testing.TB, cfg func(*tls.Config), handler func(c *tls.Conn)) *backend {
	t.Helper()
	b := &backend{id: identity(t, t.TempDir(), "central"), handler: handler}
	if b.handler == nil {
		b.handler = func(c *tls.Conn) {
			io.Copy(c, c)
			c.CloseWrite()
		}
	}
	tcfg := tlsconf.ServerConfig(b.id, nil)
	if cfg != nil {
		cfg(tcfg)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", tcfg)
	if err != nil {
		t.Fatal(err)
	}
	b.ln = ln
	b.wg.Add(1)
	go func() { // accept loop: exits when the listener closes in Cleanup
		defer b.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.accepted.Add(1)
			b.open.Add(1)
			b.wg.Add(1)
			go func() {
				defer b.wg.Done()
				defer b.open.Add(-1)
				defer c.Close()
				tc := c.(*tls.Conn)
				tc.SetDeadline(time.Now().Add(5 * time.Second))
				if tc.Handshake() != nil {
					return
				}
				tc.SetDeadline(time.Time{})
				b.handler(tc)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); b.wg.Wait() })
	return b
}

func (b *backend) upstream(t testing.TB) UpstreamConfig {
	return UpstreamConfig{Address: b.addr(), Pins: pinsOf(t, b.id)}
}

// testProxy is a running Proxy on 127.0.0.1:0.
type testProxy struct {
	*Proxy
	addr string
	id   *tlsconf.Identity
	reg  *prometheus.Registry
}

func newTestProxy(t testing.TB, cfg Config) *testProxy {
	t.Helper()
	if cfg.Identity == nil {
		cfg.Identity = identity(t, t.TempDir(), "gateway")
	}
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	if cfg.Logger == nil {
		cfg.Logger = quietLogger()
	}
	if cfg.SourceRate == 0 {
		cfg.SourceRate = -1 // tests open many connections from 127.0.0.1
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- p.Serve(ln) }()
	t.Cleanup(func() {
		p.Close()
		if err := <-served; err != nil {
			t.Errorf("Serve returned %v, want nil after Close", err)
		}
	})
	return &testProxy{Proxy: p, addr: ln.Addr().String(), id: cfg.Identity, reg: reg}
}

// agentConfig is what an agent uses: the gateway's pin, optionally a
// client certificate.
func agentConfig(t testing.TB, gw *tlsconf.Identity, cert *tls.Certificate) *tls.Config {
	cfg := tlsconf.PinnedClientConfig(pinsOf(t, gw), "gateway")
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return cfg
}

func dialAgent(addr string, cfg *tls.Config) (*tls.Conn, error) {
	d := &net.Dialer{Timeout: 10 * time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := (&tls.Dialer{NetDialer: d, Config: cfg}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return c.(*tls.Conn), nil
}

// mustDial connects an agent (no client certificate) through the proxy,
// failing the test if it cannot; the connection closes at cleanup.
func mustDial(t testing.TB, p *testProxy) *tls.Conn {
	t.Helper()
	c, err := dialAgent(p.addr, agentConfig(t, p.id, nil))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// openRelay is mustDial plus one byte echoed by the upstream, so the
// relay is fully set up when it returns. The deadline is 20 s.
func openRelay(t testing.TB, p *testProxy) *tls.Conn {
	t.Helper()
	c := mustDial(t, p)
	c.SetDeadline(time.Now().Add(20 * time.Second))
	io.WriteString(c, "a")
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatalf("relay did not echo: %v", err)
	}
	return c
}

// echoOnce writes msg through the proxy and reads the echo back.
func echoOnce(addr string, cfg *tls.Config, msg string) (string, error) {
	c, err := dialAgent(addr, cfg)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		return "", err
	}
	if err := c.CloseWrite(); err != nil {
		return "", err
	}
	b, err := io.ReadAll(c)
	return string(b), err
}

func openStore(t testing.TB) *store.DB {
	db, err := store.Open(t.TempDir(), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// waitFor is testutil.WaitFor under the short name these tests use.
var waitFor = testutil.WaitFor
