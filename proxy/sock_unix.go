//go:build unix

package proxy

import (
	"io"
	"net"

	"golang.org/x/sys/unix"
)

// tryReads gives s reads that do not block where its connection is a
// TCP socket: one read of the non-blocking socket through its
// syscall.RawConn, errWouldBlock when it has nothing. The read deadline
// still applies.
func tryReads(s *sock) {
	tc, ok := s.Conn.(*net.TCPConn)
	if !ok {
		return
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return
	}
	var (
		into []byte
		n    int
		rerr error
	)
	read := func(fd uintptr) bool {
		for {
			n, rerr = unix.Read(int(fd), into)
			if rerr != unix.EINTR {
				break
			}
		}
		return true
	}
	s.tryRead = func(p []byte) (int, error) {
		into = p
		if err := raw.Read(read); err != nil {
			return 0, err
		}
		switch {
		case rerr == unix.EAGAIN:
			return 0, errWouldBlock
		case rerr != nil:
			return 0, rerr
		case n == 0:
			return 0, io.EOF
		}
		return n, nil
	}
}
