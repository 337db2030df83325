package push

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"

	"github.com/dpgate/dpgate/push/wire"
)

// An idle TLS session costs a goroutine parked in a read. Parked inside
// crypto/tls (tls.Conn.Read, its record reader, bytes.Buffer.ReadFrom,
// the socket) that goroutine needs a 4 KiB stack; a fresh goroutine
// parked in a plain readiness wait on the socket keeps the 2 KiB it
// started with (session.go, runSession): 2 KiB saved per idle agent,
// 30 MB at 15,000 (docs/BENCHMARKS.md, "Push: an idle session's stack").
//
// Waiting on the socket is right only when nothing the agent sent is
// already read into user space, where the socket's readiness would never
// announce it. Four places could hold such bytes; none is left holding
// any when the session waits:
//   - recordConn's own few bytes, read in the wait itself (the wait is a
//     non-blocking read, not a peek, so a wake-up costs no extra system
//     call: a whole ACK or PING record usually comes with it): the
//     session waits only when they are all taken;
//   - crypto/tls's raw input: tls.Conn reads from recordConn, which ends
//     every read at the end of a TLS record, so crypto/tls never holds a
//     byte of the next record;
//   - crypto/tls's decrypted input: the frame reader reads with at least
//     16 KiB free, the largest record's plaintext, so each tls.Conn.Read
//     takes the whole record it decrypted;
//   - the frame reader's own buffer: the session waits only when it holds
//     nothing (a frame split over records keeps it, and the reader then
//     reads instead of waiting).
// TestFramesAcrossRecords hangs if any of them keeps a byte.

// recordConn ends each Read at a TLS record boundary: a record's 5-byte
// header is read on its own, then at most the rest of its body. Its
// reads take first what await read (pend), then the socket.
type recordConn struct {
	net.Conn
	hdr  [5]byte
	hdrN int // bytes of the next record's header read so far
	body int // bytes of the current record's body not read yet
	off  bool

	wait    func() error // await's socket read; nil: none (not a TCP socket, or Windows)
	pend    [64]byte     // what await read: an ACK or PING record is 34 bytes
	pos, n  int          // pend[pos:n] not taken yet
	pendErr error        // the end await found, returned once pend is taken
}

// NetConn returns the connection underneath (link.TCPInfo unwraps it).
func (c *recordConn) NetConn() net.Conn { return c.Conn }

// passThrough stops the bounding: the connection serves another
// protocol (a cluster peer), which reads in bulk and never waits idle.
func (c *recordConn) passThrough() { c.off = true }

func (c *recordConn) Read(p []byte) (int, error) {
	switch {
	case c.off:
		return c.Conn.Read(p)
	case c.body > 0:
		n, err := c.read(p[:min(len(p), c.body)])
		c.body -= n
		return n, err
	}
	n, err := c.read(p[:min(len(p), len(c.hdr)-c.hdrN)])
	c.hdrN += copy(c.hdr[c.hdrN:], p[:n])
	if c.hdrN == len(c.hdr) {
		c.body, c.hdrN = int(binary.BigEndian.Uint16(c.hdr[3:])), 0
	}
	return n, err
}

// read takes what await read before reading the socket.
func (c *recordConn) read(p []byte) (int, error) {
	switch {
	case c.pos < c.n:
		n := copy(p, c.pend[c.pos:c.n])
		c.pos += n
		return n, nil
	case c.pendErr != nil:
		err := c.pendErr
		c.pendErr = nil
		return 0, err
	}
	return c.Conn.Read(p)
}

// pending reports whether await read something not taken yet.
func (c *recordConn) pending() bool { return c.pos < c.n || c.pendErr != nil }

// await blocks until the socket has bytes or ends, and reads what it has
// (at most len(pend)) for the next reads. It honours the read deadline.
func (c *recordConn) await() error {
	c.pos, c.n = 0, 0
	return c.wait()
}

// readBufSize holds a whole TLS record's plaintext (16 KiB) behind the
// part of a frame (at most HELLO's 2 KiB) still waiting for the rest.
const readBufSize = 20 << 10

var readBufs = sync.Pool{New: func() any { return new([readBufSize]byte) }}

// frameReader reads an agent's frames. Over a recordConn that can wait
// (TLS over a TCP socket) it holds a pooled buffer only while it has
// bytes of a frame, and answers errIdle instead of blocking when it has
// read everything; otherwise (QUIC) it reads each frame straight from r.
type frameReader struct {
	r  io.Reader
	rc *recordConn // nil, or one without wait: no idle waiting

	buf        *[readBufSize]byte // while start < end
	start, end int

	hdr   [wire.HeaderSize]byte
	small [32]byte // ACK, PING, PONG and BYE bodies fit
}

// errIdle is next's answer when nothing is left to read without waiting
// for the socket: the caller waits with await (on a goroutine whose
// stack has not grown), then calls next again.
var errIdle = errors.New("push: waiting for the agent")

// next returns the next frame, whose body may be at most max bytes; the
// body is valid until the next call.
func (f *frameReader) next(max int) (byte, []byte, error) {
	if f.rc == nil || f.rc.wait == nil {
		return wire.ReadFrame(f.r, &f.hdr, f.small[:0], max)
	}
	for {
		if b := f.held(); len(b) >= wire.HeaderSize {
			typ, n := wire.FrameHeader(b)
			if n > max {
				return typ, nil, wire.TooLarge(typ, n, max)
			}
			if len(b) >= wire.HeaderSize+n {
				f.start += wire.HeaderSize + n
				return typ, b[wire.HeaderSize : wire.HeaderSize+n], nil
			}
		}
		if len(f.held()) == 0 && !f.rc.pending() {
			f.release()
			return 0, nil, errIdle
		}
		if err := f.fill(); err != nil {
			return 0, nil, err
		}
	}
}

// nextWaiting is next, waiting for the socket where next would not.
func (f *frameReader) nextWaiting(max int) (byte, []byte, error) {
	for {
		typ, body, err := f.next(max)
		if err != errIdle {
			return typ, body, err
		}
		if err := f.rc.await(); err != nil {
			return 0, nil, err
		}
	}
}

// fill reads what the connection has: what await read, or the rest of a
// frame it holds part of (which is on its way).
func (f *frameReader) fill() error {
	if f.buf == nil {
		f.buf = readBufs.Get().(*[readBufSize]byte)
	} else if f.start > 0 {
		f.end = copy(f.buf[:], f.buf[f.start:f.end])
		f.start = 0
	}
	n, err := f.r.Read(f.buf[f.end:])
	f.end += n
	if n > 0 {
		return nil // an error comes again with the next read
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return err
}

// held is what the reader has of frames not returned yet.
func (f *frameReader) held() []byte {
	if f.buf == nil {
		return nil
	}
	return f.buf[f.start:f.end]
}

// release gives the buffer back; the reader must hold no bytes.
func (f *frameReader) release() {
	if f.buf != nil {
		readBufs.Put(f.buf)
		f.buf, f.start, f.end = nil, 0, 0
	}
}
