// Package loadtest is the library behind dpload: load scenarios against a
// gateway, the TLS sink they talk to, and the reports they produce.
//
// The sink speaks a one-byte protocol so that any TCP-level proxy
// (dpgate, HAProxy) can sit between client and sink unchanged: the first
// byte of a connection picks the mode.
//
//	'D' discard: the sink reads until the client's half-close, then
//	    answers "<bytes read>\n" and closes; the client checks the count.
//	'E' echo: the sink writes back everything it reads until EOF.
package loadtest

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
)

// Sink modes.
const (
	ModeDiscard = 'D'
	ModeEcho    = 'E'
)

// Sink is the TLS endpoint load scenarios send to (dpload sink). Like the
// gateway's components it does not listen: Serve takes a listener.
type Sink struct {
	tls *tls.Config

	received atomic.Int64
	conns    atomic.Int64
	wg       sync.WaitGroup
	mu       sync.Mutex
	lns      []net.Listener
	closed   bool
}

// NewSink serves TLS with cfg (which holds the certificate).
func NewSink(cfg *tls.Config) *Sink { return &Sink{tls: cfg} }

// Serve accepts on ln until Close.
func (s *Sink) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.lns = append(s.lns, ln)
	s.mu.Unlock()
	for {
		c, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		s.wg.Add(1)
		go s.handle(tls.Server(c, s.tls)) // exits at the client's EOF or Close
	}
}

func (s *Sink) handle(c *tls.Conn) {
	defer s.wg.Done()
	defer c.Close()
	s.conns.Add(1)
	br := bufio.NewReaderSize(c, 32<<10)
	mode, err := br.ReadByte()
	if err != nil {
		return
	}
	switch mode {
	case ModeDiscard:
		n, _ := io.Copy(io.Discard, br)
		s.received.Add(n)
		fmt.Fprintf(c, "%d\n", n)
		c.CloseWrite()
	case ModeEcho:
		buf := make([]byte, 16<<10)
		for {
			n, err := br.Read(buf)
			if n > 0 {
				s.received.Add(int64(n))
				if _, werr := c.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				c.CloseWrite()
				return
			}
		}
	}
}

// Received is the number of payload bytes the sink has read.
func (s *Sink) Received() int64 { return s.received.Load() }

// Close stops accepting. Established connections end when their clients
// close them.
func (s *Sink) Close() error {
	s.mu.Lock()
	s.closed = true
	for _, ln := range s.lns {
		ln.Close()
	}
	s.mu.Unlock()
	return nil
}
