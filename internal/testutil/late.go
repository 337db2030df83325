package testutil

import (
	"net"
	"sync"
	"sync/atomic"
)

// LateListener hands out the one connection it accepts only once it is
// closed: a connection accepted just as a server stops (seen in an
// upgrade under load: a probe's handshake was reset). Accepted is closed
// when the connection is in; Accept after the first returns
// net.ErrClosed once the listener is closed.
type LateListener struct {
	net.Listener
	Accepted chan struct{}
	closed   chan struct{}
	once     sync.Once
	handed   atomic.Bool
}

// NewLateListener wraps ln.
func NewLateListener(ln net.Listener) *LateListener {
	return &LateListener{Listener: ln, Accepted: make(chan struct{}), closed: make(chan struct{})}
}

func (l *LateListener) Accept() (net.Conn, error) {
	if l.handed.Swap(true) {
		<-l.closed
		return nil, net.ErrClosed
	}
	c, err := l.Listener.Accept()
	close(l.Accepted)
	<-l.closed
	return c, err
}

func (l *LateListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return l.Listener.Close()
}
