package push_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/dpgate/dpgate/internal/testutil"
	"github.com/dpgate/dpgate/push"
	"github.com/dpgate/dpgate/push/client"
	"github.com/dpgate/dpgate/push/wire"
)

// silentConn is a spoofed source: it lets the client's first datagram
// (its Initial) out, then never sends again, and counts what the server
// sends to it. Only one: a client that retransmits its Initial before the
// server answers (a loaded machine) gives the server a larger allowance,
// and quic-go checks that allowance before each datagram it sends, not
// with the datagram's size, so its last one may cross 3x by a fraction of
// a datagram (seen: 2,560 bytes in, 7,799 out, 3.05x).
type silentConn struct {
	net.PacketConn
	mu       sync.Mutex
	sent     int
	received int
	packets  [2]int // datagrams sent, received: for the IP and UDP headers
	other    int    // datagrams back that are not a Retry
}

func (c *silentConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.packets[0] > 0 {
		return len(b), nil // dropped: the spoofed address sends one Initial and never answers
	}
	c.sent += len(b)
	c.packets[0]++
	return c.PacketConn.WriteTo(b, addr)
}

func (c *silentConn) ReadFrom(b []byte) (int, net.Addr, error) {
	n, addr, err := c.PacketConn.ReadFrom(b)
	c.mu.Lock()
	if n > 0 {
		c.received += n
		c.packets[1]++
		if b[0]&0xf0 != 0xf0 { // QUIC v1 long header, type Retry
			c.other++
		}
	}
	c.mu.Unlock()
	return n, addr, err
}

// silentDial sends one Initial from a socket that then never answers, as
// from a spoofed address, and returns what came back once the server has
// given the handshake up (wait) or at once.
func silentDial(t *testing.T, ts *testServer, wait time.Duration) *silentConn {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sc := &silentConn{PacketConn: pc}
	tr := &quic.Transport{Conn: sc}
	t.Cleanup(func() { tr.Close() })
	udp, _ := net.ResolveUDPAddr("udp", ts.quicAddr)
	cfg := ts.tlsFor(nil)
	cfg.NextProtos = []string{wire.ALPN}
	cfg.CurvePreferences = []tls.CurveID{tls.X25519} // one Initial datagram, as a cheap attacker sends
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	go tr.Dial(ctx, udp, cfg, &quic.Config{HandshakeIdleTimeout: 2 * time.Second})
	testutil.WaitFor(t, 10*time.Second, func() error {
		sc.mu.Lock()
		defer sc.mu.Unlock()
		if sc.received == 0 {
			return errors.New("no answer to the Initial yet")
		}
		return nil
	})
	// Everything the server sends until it gives the handshake up: its
	// retransmissions count against the limit too.
	time.Sleep(wait)
	return sc
}

// ratio logs and returns what came back for what was sent.
func (c *silentConn) ratio(t *testing.T) float64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	const hdr = 28 // IPv4 and UDP
	r := float64(c.received) / float64(c.sent)
	t.Logf("sent %d bytes (the Initial), got %d back in %d datagrams (%d not a Retry): %.2fx (%.2fx with IP and UDP headers)",
		c.sent, c.received, c.packets[1], c.other, r, float64(c.received+hdr*c.packets[1])/float64(c.sent+hdr*c.packets[0]))
	return r
}

// TestQUICAmplification: an Initial from an address that never answers
// gets at most 3 times its bytes back (RFC 9000 section 8), counting
// every retransmission until the server gives up; when more handshakes
// from unvalidated addresses are in progress than QUICRetryAbove, it gets
// a Retry and nothing else. A real agent still connects then, through the
// Retry, and the count of pending handshakes goes back to 0.
func TestQUICAmplification(t *testing.T) {
	t.Parallel()
	const above = 4
	ts := newTestServer(t, func(c *push.Config) {
		c.Auth = push.AuthNone
		c.HandshakeTimeout = 2 * time.Second
		c.QUICRetryAbove = above
	})
	if r := silentDial(t, ts, 3*time.Second).ratio(t); r > 3 {
		t.Errorf("idle: %.2fx the bytes of an unvalidated Initial sent back, RFC 9000 allows 3", r)
	}
	for range above {
		silentDial(t, ts, 0)
	}
	if n := ts.QUICHandshakes(); n < above {
		t.Fatalf("%d handshakes pending, want at least %d", n, above)
	}
	sc := silentDial(t, ts, 500*time.Millisecond)
	if r := sc.ratio(t); r > 1 || sc.other > 0 {
		t.Errorf("under load: %.2fx back, %d datagrams not a Retry; want a Retry only", r, sc.other)
	}
	a := startAgent(t, client.Config{Servers: []string{ts.quicAddr}, DeviceID: "real-agent", TLS: ts.tlsFor(nil), QUIC: true})
	a.waitEvent(t, "connected")
	testutil.WaitFor(t, 20*time.Second, func() error {
		if n := ts.QUICHandshakes(); n != 0 {
			return fmt.Errorf("%d handshakes still counted as pending", n)
		}
		return nil
	})
}
