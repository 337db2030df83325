package testutil

import (
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
)

// Listener is a net.Listener whose Accept fails with EMFILE a number of
// times, as in a process out of open files, then waits until it is
// closed.
type Listener struct {
	left   atomic.Int64
	closed chan struct{}
	once   sync.Once
}

// FailingListener fails Accept n times.
func FailingListener(n int) *Listener {
	l := &Listener{closed: make(chan struct{})}
	l.left.Store(int64(n))
	return l
}

// Failed says whether every failure has been returned and Accept called
// once more after them (for WaitFor).
func (l *Listener) Failed() error {
	if n := l.left.Load(); n >= 0 {
		return fmt.Errorf("%d accept failures to go", n)
	}
	return nil
}

func (l *Listener) Accept() (net.Conn, error) {
	if l.left.Add(-1) >= 0 {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	<-l.closed
	return nil, net.ErrClosed
}

func (l *Listener) Close() error   { l.once.Do(func() { close(l.closed) }); return nil }
func (l *Listener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }
