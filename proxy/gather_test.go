//go:build unix

package proxy

import (
	"bytes"
	"crypto/tls"
	"io"
	"math/rand/v2"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dpgate/dpgate/internal/testutil"
	"github.com/dpgate/dpgate/tlsconf"
)

// countingConn counts the writes that reach the socket.
type countingConn struct {
	*net.TCPConn
	writes atomic.Int64
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.TCPConn.Write(p)
}

// tlsRelay is a relay between two real TLS connections over loopback
// TCP, its socks as the proxy makes them: the agent's end (agent), the
// upstream's (up), and the upstream's writes as they reach its socket.
type tlsRelay struct {
	agent, up *tls.Conn
	upWrites  *countingConn
	done      chan error
}

func startTLSRelay(t *testing.T, before func(agent *tls.Conn)) *tlsRelay {
	t.Helper()
	cert, err := tlsconf.Issue(tlsconf.Template{CommonName: "relay-test"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := &tls.Config{Certificates: []tls.Certificate{cert}}
	cli := &tls.Config{InsecureSkipVerify: true}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	agentPeer, agentRaw := tcpPair(t, ln)
	upRaw, upPeer := tcpPair(t, ln)
	// Room for everything the agent sends before the relay starts.
	agentRaw.SetReadBuffer(4 << 20)
	agentPeer.SetWriteBuffer(4 << 20)
	counted := &countingConn{TCPConn: upRaw}
	r := &tlsRelay{
		agent:    tls.Client(agentPeer, cli),
		up:       tls.Server(upPeer, srv),
		upWrites: counted,
		done:     make(chan error, 1),
	}
	gwAgent, gwUp := tls.Server(newSock(agentRaw), srv), tls.Client(newSock(counted), cli)
	for _, c := range []*tls.Conn{r.agent, r.up, gwAgent, gwUp} {
		t.Cleanup(func() { c.NetConn().Close() })
	}
	hs := make(chan error, 4)
	for _, c := range []*tls.Conn{r.agent, r.up, gwAgent, gwUp} {
		go func() { hs <- c.Handshake() }()
	}
	for range 4 {
		if err := <-hs; err != nil {
			t.Fatal(err)
		}
	}
	if before != nil {
		before(r.agent)
	}
	rl := &relay{idle: time.Hour, in: new(atomic.Int64), out: new(atomic.Int64)}
	go func() { r.done <- rl.run(gwAgent, gwUp) }()
	t.Cleanup(func() {
		gwAgent.NetConn().Close()
		gwUp.NetConn().Close()
		<-r.done
	})
	return r
}

// TestGatheredWrites: records the agent sent that are waiting when the
// relay reads go to the upstream in writes of several (sock.go), byte
// for byte. 512 KiB waiting is 32 full records; before, the relay wrote
// each record it read with a write of its own, and split each in two
// (1 KiB, then the rest: 64 writes).
func TestGatheredWrites(t *testing.T) {
	data := make([]byte, 512<<10)
	io.ReadFull(testutil.Pseudorandom(), data)
	r := startTLSRelay(t, func(agent *tls.Conn) {
		agent.SetWriteDeadline(time.Now().Add(30 * time.Second))
		if _, err := agent.Write(data); err != nil { // all in the sockets' buffers
			t.Fatal(err)
		}
		agent.CloseWrite()
	})
	r.up.SetReadDeadline(time.Now().Add(30 * time.Second))
	got, err := io.ReadAll(r.up)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("upstream got %d bytes, not the %d sent", len(got), len(data))
	}
	records := len(data) / largeBuf
	// The handshake's writes count too (a few).
	if w := r.upWrites.writes.Load(); w > int64(records/2) {
		t.Errorf("%d writes for %d records waiting, want at most %d", w, records, records/2)
	} else {
		t.Logf("%d records in %d writes (handshake included)", records, w)
	}
}

// TestGatherKeepsOrder: writes of random sizes, a byte to 40 KiB, one
// after another as fast as the agent can make them and both ways at
// once, arrive byte for byte: reads that find the socket empty, partial
// records kept by crypto/tls, gathered and direct writes, all in order.
func TestGatherKeepsOrder(t *testing.T) {
	r := startTLSRelay(t, nil)
	rng := rand.New(rand.NewPCG(1, 2))
	var chunks [][]byte
	total := 0
	for total < 8<<20 {
		b := make([]byte, 1+rng.IntN(40<<10))
		io.ReadFull(testutil.Pseudorandom(), b)
		chunks = append(chunks, b)
		total += len(b)
	}
	want := bytes.Join(chunks, nil)
	deadline := time.Now().Add(60 * time.Second)
	send := func(c *tls.Conn) error {
		c.SetWriteDeadline(deadline)
		for _, b := range chunks {
			if _, err := c.Write(b); err != nil {
				return err
			}
		}
		return c.CloseWrite()
	}
	errc := make(chan error, 2)
	go func() { errc <- send(r.agent) }()
	go func() { errc <- send(r.up) }()
	for _, c := range []*tls.Conn{r.up, r.agent} {
		c.SetReadDeadline(deadline)
		got, err := io.ReadAll(c)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			n := 0
			for n < len(got) && n < len(want) && got[n] == want[n] {
				n++
			}
			t.Fatalf("got %d bytes, want %d; first difference at %d", len(got), len(want), n)
		}
	}
	for range 2 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	if err := <-r.done; err != nil {
		t.Errorf("relay ended with %v", err)
	}
	r.done <- nil // for the cleanup
}
