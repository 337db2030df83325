//go:build unix

package push

import (
	"io"
	"net"

	"golang.org/x/sys/unix"
)

// socketWait gives wc its wait and tryRead where wc's connection is a
// plain TCP socket: reads of the non-blocking socket through its
// syscall.RawConn, the wait parked on the socket's readiness while there
// is nothing (net's own Read does the same, deeper in the stack). The
// wait honours the read deadline and ends when the connection is closed.
func socketWait(wc *waitConn) {
	tc, ok := wc.Conn.(*net.TCPConn)
	if !ok {
		return
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return
	}
	var (
		into []byte // what the next read fills
		n    int
		rerr error
	)
	read := func(fd uintptr) {
		for {
			n, rerr = unix.Read(int(fd), into)
			if rerr != unix.EINTR {
				break
			}
		}
		if n < 0 {
			n = 0
		}
		if n == 0 && rerr == nil {
			rerr = io.EOF
		}
	}
	waitRead := func(fd uintptr) bool {
		read(fd)
		return rerr != unix.EAGAIN
	}
	tryRead := func(fd uintptr) bool { read(fd); return true }
	wc.wait = func() error {
		into = wc.pend[:]
		if err := raw.Read(waitRead); err != nil {
			return err
		}
		wc.n, wc.pendErr = n, rerr
		return nil
	}
	wc.tryRead = func(p []byte) (int, error) {
		into = p
		if err := raw.Read(tryRead); err != nil {
			return 0, err
		}
		if rerr == unix.EAGAIN {
			return 0, errWouldBlock
		}
		return n, rerr
	}
}
