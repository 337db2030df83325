package proxy

import (
	"net"
	"sync"

	"github.com/dpgate/dpgate/internal/nbsock"
)

// A bulk relay used to write each TLS record with a system call of its
// own, and on loopback or a LAN that call, not the cipher, was most of
// the CPU a relayed byte cost (a write to a local TCP socket carries the
// receiver's side of the stack too). So when a read fills the buffer,
// pipe gathers what the source already has, without waiting for more,
// and sends the records it makes in one write: up to batchBytes of
// plaintext. A relay that forwards what arrives still never waits for
// more to arrive.

// batchBytes is the most plaintext one gathered write carries: four
// records.
const batchBytes = 4 * largeBuf

// heldPool holds the buffers records wait in until a gathered write: a
// gather stops once it has batchBytes, so the last read may add up to a
// record more; each record adds 22 bytes of header and tag.
var heldPool = sync.Pool{New: func() any { b := make([]byte, 0, batchBytes+largeBuf+8*22); return &b }}

// sock is the TCP connection under one side's TLS in a relay. Its writes
// can be held and sent together (hold, then send); its reads can be
// made not to block (nonblock, set only by the goroutine that reads).
type sock struct {
	net.Conn
	raw      *nbsock.Socket // nil: every read blocks (not a TCP socket, or Windows)
	nonblock bool

	mu      sync.Mutex // writes: records held, or a direct write under way
	holding bool
	held    *[]byte
}

func newSock(c net.Conn) *sock {
	raw, _ := nbsock.Open(c)
	return &sock{Conn: c, raw: raw}
}

// NetConn returns the connection underneath (link.TCPInfo unwraps it).
func (s *sock) NetConn() net.Conn { return s.Conn }

// gathers reports whether reads can be tried without blocking.
func (s *sock) gathers() bool { return s.raw != nil }

// Read reads without blocking while nonblock is set (nbsock.ErrWouldBlock
// when there is nothing; crypto/tls keeps the part of a record it has).
func (s *sock) Read(p []byte) (int, error) {
	if s.nonblock {
		return s.raw.TryRead(p)
	}
	return s.Conn.Read(p)
}

// Write sends p, or holds it while holding (records of any writer, so a
// KeyUpdate crypto/tls answers from the other direction keeps its place).
func (s *sock) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.holding {
		*s.held = append(*s.held, p...)
		return len(p), nil
	}
	return s.Conn.Write(p)
}

// hold makes writes wait for send.
func (s *sock) hold() {
	s.mu.Lock()
	s.holding = true
	s.held = heldPool.Get().(*[]byte)
	s.mu.Unlock()
}

// send writes what was held in one write and ends holding.
func (s *sock) send() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var err error
	if b := *s.held; len(b) > 0 {
		_, err = s.Conn.Write(b)
	}
	*s.held = (*s.held)[:0]
	heldPool.Put(s.held)
	s.held, s.holding = nil, false
	return err
}
