package testutil

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
)

// FreePort returns "127.0.0.1:PORT" with a port free for both TCP and UDP,
// for a process the test starts to listen on (or one that must come back
// on the same port). It is taken below the kernel's ephemeral range,
// which a listen on port 0 and every outgoing connection draw from: a
// port from there, closed and handed to a child, can become some
// connection's source port before the child binds it, and the child
// fails with "bind: address already in use" (seen in the suite, under
// load). A lock file, held until the test ends, keeps the suite's other
// test processes off the port.
func FreePort(t testing.TB) string {
	t.Helper()
	lo, hi := portRange()
	for range 200 {
		port := lo + rand.IntN(hi-lo)
		release, ok := lockPort(port)
		if !ok {
			continue
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		if bindable(addr) {
			t.Cleanup(release)
			return addr
		}
		release()
	}
	t.Fatalf("no port in %d-%d free for TCP and UDP after 200 tries", lo, hi-1)
	return ""
}

// portRange is where FreePort draws from: the 12,000 ports below the
// ephemeral range (32768-60999 by default: 20768-32767), or, where the
// range cannot be read (not Linux), 20000-32767.
func portRange() (lo, hi int) {
	lo, hi = 20000, 32768
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return lo, hi
	}
	var first, last int
	if _, err := fmt.Sscan(strings.TrimSpace(string(b)), &first, &last); err != nil || first < 4000 {
		return lo, hi
	}
	return max(1024, first-12000), first
}

func bindable(addr string) bool {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}
	defer ln.Close()
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return false
	}
	pc.Close()
	return true
}
