package push_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/dpgate/dpgate/push"
	"github.com/dpgate/dpgate/push/wire"
	"github.com/quic-go/quic-go"
)

// heldConn keeps what is written while held and sends it in one write
// on flush: TLS records that reach the gateway in one segment.
type heldConn struct {
	net.Conn
	hold bool
	buf  bytes.Buffer
}

func (c *heldConn) Write(p []byte) (int, error) {
	if c.hold {
		return c.buf.Write(p)
	}
	return c.Conn.Write(p)
}

func (c *heldConn) flush(t *testing.T) {
	t.Helper()
	if _, err := c.Conn.Write(c.buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	c.buf.Reset()
}

// waitSessionIdle waits until the server's one session waits for its
// agent in await (a function name as goroutine dumps write it), on a
// fresh goroutine (a small stack), not in a read from the goroutine that
// handled its frames (push/frames.go).
func waitSessionIdle(t *testing.T, when, await string) {
	t.Helper()
	if runtime.GOOS == "windows" && strings.Contains(await, "waitConn") {
		return // no such wait there (nbsock.Open): frames are read inside crypto/tls
	}
	waitFor(t, 20*time.Second, func() error {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		waiting := false
		for _, g := range strings.Split(string(buf), "\n\n") {
			if strings.Contains(g, "push.(*Server).runSession(") { // a frame, not "created by"
				return fmt.Errorf("%s: a session goroutine is still reading:\n%s", when, g)
			}
			waiting = waiting || strings.Contains(g, "push.(*Server).idleSession") && strings.Contains(g, await)
		}
		if !waiting {
			return fmt.Errorf("%s: no session goroutine waits in %s:\n%s", when, await, buf)
		}
		return nil
	})
}

// TestFramesAcrossRecords: however an agent's frames fall into TLS
// records and records into segments, every frame is answered, and a
// session with part of a frame or of a record waits for the rest on its
// socket, not inside crypto/tls (a smaller stack, push/frames.go). A byte
// read into user space and left there during that wait would never be
// answered: each case below would hang.
func TestFramesAcrossRecords(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, func(c *push.Config) { c.Auth = push.AuthNone })
	cfg := ts.tlsFor(nil)
	cfg.NextProtos = []string{wire.ALPN}
	nc, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	hc := &heldConn{Conn: nc}
	tc := tls.Client(hc, cfg)
	t.Cleanup(func() { tc.Close() })
	tc.SetDeadline(time.Now().Add(20 * time.Second))
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	r := &rawConn{Conn: tc}
	ping := func(v uint64) []byte { return wire.MarshalU64(wire.TypePing, v) }
	pongs := func(from, to uint64) {
		t.Helper()
		for v := from; v <= to; v++ {
			typ, body := r.read(t)
			got, err := wire.ParseU64(body)
			if typ != wire.TypePong || err != nil || got != v {
				t.Fatalf("got frame 0x%02x %x, want PONG %d", typ, body, v)
			}
		}
	}
	send := func(records ...[]byte) { // each its own record, all in one segment
		t.Helper()
		hc.hold = true
		for _, rec := range records {
			if _, err := tc.Write(rec); err != nil {
				t.Fatal(err)
			}
		}
		hc.hold = false
		hc.flush(t)
	}

	waitIdle := func(when string) { t.Helper(); waitSessionIdle(t, when, "push.(*waitConn).await") }

	// HELLO and a PING in one record.
	send(append((&wire.Hello{MinVersion: 1, MaxVersion: 1, DeviceID: "dev-rec"}).Marshal(), ping(1)...))
	if typ, body := r.read(t); typ != wire.TypeWelcome {
		t.Fatalf("after HELLO got frame 0x%02x %q, want WELCOME", typ, body)
	}
	pongs(1, 1)
	// Two frames in one record, then two records in one segment.
	send(append(ping(2), ping(3)...))
	pongs(2, 3)
	send(ping(4), ping(5))
	pongs(4, 5)
	// A frame split over two records, in one segment and in two.
	p := ping(6)
	send(p[:3], p[3:])
	pongs(6, 6)
	p = ping(7)
	send(p[:5])
	waitIdle("part of a frame") // the rest may never come: nothing blocks on it
	send(p[5:])
	pongs(7, 7)
	// Part of a record, the rest later.
	hc.hold = true
	if _, err := tc.Write(ping(8)); err != nil {
		t.Fatal(err)
	}
	hc.hold = false
	rec := bytes.Clone(hc.buf.Bytes())
	hc.buf.Reset()
	if _, err := nc.Write(rec[:10]); err != nil {
		t.Fatal(err)
	}
	waitIdle("part of a record")
	if _, err := nc.Write(rec[10:]); err != nil {
		t.Fatal(err)
	}
	pongs(8, 8)
	// A frame a byte a record, and 100 frames a record each, one segment.
	var recs [][]byte
	for _, b := range ping(9) {
		recs = append(recs, []byte{b})
	}
	send(recs...)
	pongs(9, 9)
	recs = recs[:0]
	for v := range uint64(100) {
		recs = append(recs, ping(10+v))
	}
	send(recs...)
	pongs(10, 109)
	waitIdle("after the frames")
}

// TestQUICFramesAcrossWrites: a QUIC session waits for its agent the same
// way, on a fresh goroutine (quicReader.await), with nothing to read and
// with part of a frame, and answers every frame however the agent's
// writes split them.
func TestQUICFramesAcrossWrites(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, func(c *push.Config) { c.Auth = push.AuthNone })
	cfg := ts.tlsFor(nil)
	cfg.NextProtos = []string{wire.ALPN}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	qc, err := quic.DialAddr(ctx, ts.quicAddr, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { qc.CloseWithError(0, "") })
	st, err := qc.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st.SetDeadline(time.Now().Add(20 * time.Second))
	write := func(b []byte) {
		t.Helper()
		if _, err := st.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	var hdr [wire.HeaderSize]byte
	read := func() (byte, []byte) {
		t.Helper()
		typ, body, err := wire.ReadFrame(st, &hdr, nil, 1<<16)
		if err != nil {
			t.Fatal(err)
		}
		return typ, body
	}
	ping := func(v uint64) []byte { return wire.MarshalU64(wire.TypePing, v) }
	pongs := func(from, to uint64) {
		t.Helper()
		for v := from; v <= to; v++ {
			typ, body := read()
			if got, err := wire.ParseU64(body); typ != wire.TypePong || err != nil || got != v {
				t.Fatalf("got frame 0x%02x %x, want PONG %d", typ, body, v)
			}
		}
	}
	waitIdle := func(when string) { t.Helper(); waitSessionIdle(t, when, "push.(*quicReader).await") }

	write(append((&wire.Hello{MinVersion: 1, MaxVersion: 1, DeviceID: "dev-quic"}).Marshal(), ping(1)...))
	if typ, body := read(); typ != wire.TypeWelcome {
		t.Fatalf("after HELLO got frame 0x%02x %q, want WELCOME", typ, body)
	}
	pongs(1, 1)
	waitIdle("after the first frames")
	p := ping(2)
	write(p[:3])
	waitIdle("part of a frame") // the rest may never come: nothing blocks on it
	write(p[3:])
	pongs(2, 2)
	var many []byte
	for v := range uint64(100) {
		many = append(many, ping(3+v)...)
	}
	write(many)
	pongs(3, 102)
	waitIdle("after 100 frames in one write")
}
