package testutil

import (
	"net"
	"runtime"
	"strconv"
	"testing"
)

// TestFreePortOutsideTheEphemeralRange: the ports are below the range
// connections take their source ports from, free for TCP and UDP, and
// held for the test: no second FreePort (in this process or another of
// the suite) hands one out again until the test ends.
func TestFreePortOutsideTheEphemeralRange(t *testing.T) {
	lo, hi := portRange()
	seen := map[string]bool{}
	for range 50 {
		addr := FreePort(t)
		_, p, _ := net.SplitHostPort(addr)
		port, _ := strconv.Atoi(p)
		if port < lo || port >= hi {
			t.Errorf("port %d outside %d-%d", port, lo, hi-1)
		}
		if seen[addr] {
			t.Errorf("%s handed out twice", addr)
		}
		seen[addr] = true
		if !bindable(addr) {
			t.Errorf("%s not free for TCP and UDP", addr)
		}
		if runtime.GOOS != "windows" {
			if release, ok := lockPort(port); ok {
				release()
				t.Errorf("port %d not held after FreePort", port)
			}
		}
	}
}
