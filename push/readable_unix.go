//go:build unix

package push

import (
	"io"
	"net"

	"golang.org/x/sys/unix"
)

// socketWait gives rc its wait where rc's connection is a plain TCP
// socket: a non-blocking read into rc.pend, parked on the socket's
// readiness while there is nothing (net's own Read does the same, deeper
// in the stack). It honours the read deadline and ends when the
// connection is closed.
func socketWait(rc *recordConn) {
	tc, ok := rc.Conn.(*net.TCPConn)
	if !ok {
		return
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return
	}
	read := func(fd uintptr) bool {
		for {
			n, err := unix.Read(int(fd), rc.pend[:])
			switch {
			case err == unix.EINTR:
				continue
			case err == unix.EAGAIN:
				return false
			case err != nil:
				rc.pendErr = err
			case n == 0:
				rc.pendErr = io.EOF
			default:
				rc.n = n
			}
			return true
		}
	}
	rc.wait = func() error { return raw.Read(read) }
}
