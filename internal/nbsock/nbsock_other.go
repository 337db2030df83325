//go:build !unix

package nbsock

import "net"

type raw struct{}

// Open returns false here: the sockets Go's poller manages on Windows are
// not in non-blocking mode, so a read to try first would block.
func Open(net.Conn) (*Socket, bool) { return nil, false }

// TryRead is not reached: Open returns no Socket.
func (s *Socket) TryRead([]byte) (int, error) { return 0, ErrWouldBlock }

// TryWrite is not reached: Open returns no Socket.
func (s *Socket) TryWrite([]byte) (int, error) { return 0, ErrWouldBlock }

// WaitRead is not reached: Open returns no Socket.
func (s *Socket) WaitRead([]byte) (int, error, error) { return 0, nil, ErrWouldBlock }
