package proxy

import (
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// tcpPair is a connected loopback TCP pair.
func tcpPair(t *testing.T, ln net.Listener) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

// TestStopWinsOverReArm: the agent's connection closed at the start of a
// relay (as Proxy.Close does) ends it, although the other direction arms
// its deadline at the same moment. Before, that direction could re-arm
// after stop's deadline in the past and block until the idle timeout:
// Proxy.Close waited for such a relay for minutes (a hung CI run).
func TestStopWinsOverReArm(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for i := range 500 {
		agentPeer, agent := tcpPair(t, ln)
		up, upPeer := tcpPair(t, ln)
		r := &relay{idle: time.Hour, in: new(atomic.Int64), out: new(atomic.Int64)}
		done := make(chan error, 1)
		go func() { done <- r.run(agent, up) }()
		agent.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("iteration %d: the relay did not end in 10 s after its agent connection closed", i)
		}
		for _, c := range []net.Conn{agentPeer, up, upPeer} {
			c.Close()
		}
	}
}
