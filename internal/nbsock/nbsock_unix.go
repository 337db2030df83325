//go:build unix

package nbsock

import (
	"io"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

type raw struct {
	rc                syscall.RawConn
	tryRead, waitRead func(fd uintptr) bool
	tryWrite          func(fd uintptr) bool
}

// Open returns the socket of c, or false when c is not a TCP connection.
func Open(c net.Conn) (*Socket, bool) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil, false
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil, false
	}
	s := &Socket{raw: raw{rc: rc}}
	s.tryRead = func(fd uintptr) bool { s.read(fd); return true }
	s.waitRead = func(fd uintptr) bool { s.read(fd); return s.err != unix.EAGAIN }
	s.tryWrite = func(fd uintptr) bool {
		for {
			s.wn, s.werr = unix.Write(int(fd), s.from)
			if s.werr != unix.EINTR {
				return true
			}
		}
	}
	return s, true
}

// TryWrite writes what the socket takes of p without waiting: all of it,
// part, or nothing (ErrWouldBlock). The connection's write deadline
// applies.
func (s *Socket) TryWrite(p []byte) (int, error) {
	s.from = p
	err := s.rc.Write(s.tryWrite)
	s.from = nil
	if err != nil {
		return 0, err
	}
	if s.werr == unix.EAGAIN {
		return 0, ErrWouldBlock
	}
	return max(s.wn, 0), s.werr
}

func (s *Socket) read(fd uintptr) {
	for {
		s.n, s.err = unix.Read(int(fd), s.into)
		if s.err != unix.EINTR {
			break
		}
	}
	if s.n < 0 {
		s.n = 0
	}
	if s.n == 0 && s.err == nil {
		s.err = io.EOF
	}
}

// TryRead reads what the socket has, up to len(p), or returns
// ErrWouldBlock when it has nothing.
func (s *Socket) TryRead(p []byte) (int, error) {
	s.into = p
	if err := s.rc.Read(s.tryRead); err != nil {
		return 0, err
	}
	if s.err == unix.EAGAIN {
		return 0, ErrWouldBlock
	}
	return s.n, s.err
}

// WaitRead blocks until the socket has bytes or ends, parked on its
// readiness as net's own Read is (deeper in the stack), and reads what
// it has, up to len(p). err is the wait's own failure (the deadline
// passed, the connection was closed), with nothing read; readErr is what
// the read found with its n bytes (io.EOF, a reset).
func (s *Socket) WaitRead(p []byte) (n int, readErr, err error) {
	s.into = p
	if err := s.rc.Read(s.waitRead); err != nil {
		return 0, nil, err
	}
	return s.n, s.err, nil
}
