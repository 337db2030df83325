//go:build unix

package push

import (
	"net"

	"golang.org/x/sys/unix"
)

// readableWaiter returns a wait for c's socket to have something to read
// (data, the end of the stream or an error), or nil where c is not a
// plain TCP socket. It peeks, so it consumes nothing and does not depend
// on a readiness edge that an earlier read may have used up; it honours
// c's read deadline and ends when c is closed.
func readableWaiter(c net.Conn) func() error {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	var b [1]byte
	peek := func(fd uintptr) bool {
		_, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		return err != unix.EAGAIN
	}
	return func() error { return rc.Read(peek) }
}
