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
// announce it. Three places could hold such bytes; each is kept empty
// between frames:
//   - crypto/tls's raw input: tls.Conn reads from recordConn, which ends
//     every read at the end of a TLS record, so crypto/tls never holds a
//     byte of the next record;
//   - crypto/tls's decrypted input: the frame reader reads with at least
//     16 KiB free, the largest record's plaintext, so each tls.Conn.Read
//     takes the whole record it decrypted;
//   - the frame reader's own buffer: the wait happens only when it holds
//     nothing (a frame split over records keeps it, and the reader then
//     reads instead of waiting).
// TestFramesAcrossRecords hangs if any of them keeps a byte.

// recordConn ends each Read at a TLS record boundary: a record's 5-byte
// header is read on its own, then at most the rest of its body.
type recordConn struct {
	net.Conn
	hdr  [5]byte
	hdrN int // bytes of the next record's header read so far
	body int // bytes of the current record's body not read yet
	off  bool
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
		n, err := c.Conn.Read(p[:min(len(p), c.body)])
		c.body -= n
		return n, err
	}
	n, err := c.Conn.Read(p[:min(len(p), len(c.hdr)-c.hdrN)])
	c.hdrN += copy(c.hdr[c.hdrN:], p[:n])
	if c.hdrN == len(c.hdr) {
		c.body, c.hdrN = int(binary.BigEndian.Uint16(c.hdr[3:])), 0
	}
	return n, err
}

// readBufSize holds a whole TLS record's plaintext (16 KiB) behind the
// part of a frame (at most HELLO's 2 KiB) still waiting for the rest.
const readBufSize = 20 << 10

var readBufs = sync.Pool{New: func() any { return new([readBufSize]byte) }}

// frameReader reads an agent's frames. With wait set (TLS over a socket)
// it holds a pooled buffer only while it has bytes of a frame, and waits
// for the socket to become readable before it reads after a frame;
// without (QUIC) it reads each frame straight from r.
type frameReader struct {
	r    io.Reader
	wait func() error // blocks until the socket is readable; nil: no waiting

	buf        *[readBufSize]byte // while start < end
	start, end int
	readable   bool // await saw the socket readable; the next fill reads

	hdr   [wire.HeaderSize]byte
	small [32]byte // ACK, PING, PONG and BYE bodies fit
}

// errIdle is next's answer when it holds no bytes and would have to
// wait for the socket: the caller waits with await (on a goroutine whose
// stack has not grown), then calls next again.
var errIdle = errors.New("push: waiting for the agent")

// next returns the next frame, whose body may be at most max bytes; the
// body is valid until the next call. With wait set, errIdle when there is
// nothing to read without waiting.
func (f *frameReader) next(max int) (byte, []byte, error) {
	if f.wait == nil {
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
		if len(f.held()) == 0 && !f.readable {
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
		if err := f.await(); err != nil {
			return 0, nil, err
		}
	}
}

// await waits for the socket to become readable (or fail).
func (f *frameReader) await() error {
	if err := f.wait(); err != nil {
		return err
	}
	f.readable = true
	return nil
}

// fill reads what the connection has: after await, or to complete a
// frame it holds part of (whose rest is on its way).
func (f *frameReader) fill() error {
	f.readable = false
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
