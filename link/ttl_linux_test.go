package link_test

import (
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dpgate/dpgate/link"
)

// TestReflectorReturnsTTL: the answer carries the TTL (IPv4) or hop limit
// (IPv6) the probe arrived with, as the sender set it.
func TestReflectorReturnsTTL(t *testing.T) {
	for _, c := range []struct {
		network, listen string
		level, opt, ttl int
	}{
		{"udp4", "127.0.0.1:0", unix.IPPROTO_IP, unix.IP_TTL, 77},
		{"udp6", "[::1]:0", unix.IPPROTO_IPV6, unix.IPV6_UNICAST_HOPS, 33},
	} {
		pc, err := net.ListenUDP(c.network, mustUDPAddr(t, c.network, c.listen))
		if err != nil {
			t.Logf("%s: %v (no such loopback here)", c.network, err)
			continue
		}
		go (&link.Reflector{}).Serve(pc) // ends at Close
		conn, err := net.DialUDP(c.network, nil, pc.LocalAddr().(*net.UDPAddr))
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := conn.SyscallConn()
		raw.Control(func(fd uintptr) { err = unix.SetsockoptInt(int(fd), c.level, c.opt, c.ttl) })
		if err != nil {
			t.Fatalf("%s: setting the TTL: %v", c.network, err)
		}
		conn.Write((&link.Sender{Seq: 1, Timestamp: time.Now()}).Marshal(make([]byte, link.PacketSize)))
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 1500)
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("%s: no answer: %v", c.network, err)
		}
		r, err := link.ParseReflected(buf[:n])
		if err != nil || int(r.SenderTTL) != c.ttl {
			t.Errorf("%s: reflected TTL %d (%v), want %d", c.network, r.SenderTTL, err, c.ttl)
		}
		conn.Close()
		pc.Close()
	}
}
