package testutil

import (
	"crypto/tls"
	"io"
	"net"
	"sync"
	"testing"
)

// Serve accepts connections on ln until the test ends, each handled by
// handle on a goroutine of its own, and returns ln's address. A
// connection is closed when its handler returns. At cleanup it closes ln
// and every connection still open, and waits for the accept loop and the
// handlers, so none outlives its test.
func Serve(t testing.TB, ln net.Listener, handle func(net.Conn)) string {
	return serve(t, ln, handle, true)
}

// HandOver is Serve for handlers that pass their connection on (to a
// server of its own that closes it): a connection is not closed when its
// handler returns, nor at cleanup.
func HandOver(t testing.TB, ln net.Listener, handle func(net.Conn)) string {
	return serve(t, ln, handle, false)
}

func serve(t testing.TB, ln net.Listener, handle func(net.Conn), owned bool) string {
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		open = map[net.Conn]struct{}{}
	)
	wg.Add(1)
	go func() { // ends when ln is closed at cleanup
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if owned {
				mu.Lock()
				open[c] = struct{}{}
				mu.Unlock()
			}
			wg.Add(1)
			go func() { // ends when handle returns (its connection closed at the latest, if owned)
				defer wg.Done()
				defer func() {
					if owned {
						c.Close()
						mu.Lock()
						delete(open, c)
						mu.Unlock()
					}
				}()
				handle(c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range open {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// Echo writes back what it reads until the peer closes, after the
// handshake on a TLS connection.
func Echo(c net.Conn) {
	if tc, ok := c.(*tls.Conn); ok && tc.Handshake() != nil {
		return
	}
	io.Copy(c, c)
}
