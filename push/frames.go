package push

import (
	"errors"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dpgate/dpgate/internal/nbsock"
	"github.com/dpgate/dpgate/push/wire"
)

// An idle TLS session costs a goroutine parked in a read. Parked inside
// crypto/tls (tls.Conn.Read, its record reader, bytes.Buffer.ReadFrom,
// the socket) that goroutine needs a 4 KiB stack; a fresh goroutine
// parked in a plain readiness wait on the socket keeps the 2 KiB it
// started with (session.go, runSession): 2 KiB saved per idle agent,
// 30 MB at 15,000 (docs/BENCHMARKS.md, "Push: an idle session's stack").
//
// So once a session runs, its reads never block inside crypto/tls: the
// socket under it (waitConn) is read without blocking, and when it has
// nothing crypto/tls gets errWouldBlock, which it takes as temporary: it
// keeps the part of a record it has and reads on at its next call. The
// frame reader keeps the part of a frame it has, answers errIdle, and
// the session waits in waitConn.await, the only place it blocks, on a
// fresh goroutine. No byte the agent sent can be left in user space
// unannounced during that wait: crypto/tls asks for more from the socket
// only when it has no complete record and no decrypted byte left, and
// await reads what the socket has before it parks. A stalled agent holds
// nothing more than its part of a record (in crypto/tls) and of a frame.

// errWouldBlock is what waitConn's reads return, once nonblocking, when
// the socket has nothing yet; crypto/tls takes it as temporary (package
// nbsock says how).
var errWouldBlock = nbsock.ErrWouldBlock

// waitConn is the TCP connection under a push session's TLS. Its reads
// take first what await read (pend), then the socket: blocking during
// the handshake, without blocking once nonblocking is set. Its writes,
// once nonblocking, never wait for the agent either: what the socket
// does not take is owed, and a drainer writes it (Write).
type waitConn struct {
	net.Conn

	// Set by nonblocking where the connection is a TCP socket (not on
	// Windows): await waits on it and reads what it has into pend, other
	// reads do not block (errWouldBlock when there is nothing).
	sock     *nbsock.Socket
	nonblock bool

	// writeTimeout bounds a write that would block, once nonblocking
	// (0: writes are left to the caller's deadline); never beyond a
	// deadline a caller set (unix ns, 0: none), as Shutdown does for the
	// last frames.
	writeTimeout time.Duration
	callerWrite  atomic.Int64

	// What the socket did not take at once is owed (debt): Write returns
	// and a drainer goroutine (counted in wg) writes it, waiting as long
	// as the write timeout allows, so that a caller (the API accepting a
	// push) can write a frame without ever waiting for the agent.
	// onDrained runs when the drainer has written all.
	wg        *sync.WaitGroup
	onDrained func()
	omu       sync.Mutex
	debt      *debt // nil: nothing owed, nothing failed

	pend    [64]byte // an ACK or PING record is 34 bytes
	pos, n  int      // pend[pos:n] not taken yet
	pendErr error    // the end await found, returned once pend is taken
	drained bool     // the last read of the socket left it empty
}

// NetConn returns the connection underneath (link.TCPInfo unwraps it).
func (c *waitConn) NetConn() net.Conn { return c.Conn }

// nonblocking makes reads of the socket return errWouldBlock instead of
// blocking, where await can do the waiting; it reports whether it can.
// (Called once the handshake is done: a connection that fails it, or
// serves a cluster peer, never needs the socket opened for it.)
func (c *waitConn) nonblocking() bool {
	c.sock, c.nonblock = nbsock.Open(c.Conn)
	return c.nonblock
}

func (c *waitConn) Read(p []byte) (int, error) {
	switch {
	case len(p) == 0:
		return 0, nil
	case c.pos < c.n:
		n := copy(p, c.pend[c.pos:c.n])
		c.pos += n
		return n, nil
	case c.pendErr != nil:
		err := c.pendErr
		c.pendErr = nil
		return 0, err
	case !c.nonblock:
		return c.Conn.Read(p)
	case c.drained: // what came since, await reads
		return 0, errWouldBlock
	}
	n, err := c.sock.TryRead(p)
	c.drained = n < len(p)
	return n, err
}

// debt is what a connection's writes owe, while a drainer writes it.
type debt struct {
	buf  []byte
	err  error         // the drainer's failure: every later write fails
	done chan struct{} // closed when the drainer ends
}

// owedLimit is how much may be owed before a write waits for the
// drainer. A session writes a push only when nothing is owed
// (session.flush), and the largest frame in its TLS records fits well
// within this, so its writes never wait; only frames it cannot put off
// (a PONG, an ERROR) are added behind what is owed.
const owedLimit = 2 * wire.MaxFrame

// Write writes p. Once nonblocking, it tries the socket first: a write
// the socket takes at once needs no deadline (arming one per write, a
// timer update, was 3 % of the gateway's CPU at 2,000 pushes a second).
// What the socket does not take is owed and written by a drainer
// goroutine within writeTimeout (never past a deadline the caller set),
// so Write returns without waiting for the agent unless owedLimit is
// owed already.
func (c *waitConn) Write(p []byte) (int, error) {
	if !c.nonblock || c.writeTimeout == 0 {
		return c.Conn.Write(p)
	}
	c.omu.Lock()
	defer c.omu.Unlock()
	for d := c.debt; d != nil && d.err == nil && len(d.buf) >= owedLimit; d = c.debt {
		c.omu.Unlock()
		<-d.done
		c.omu.Lock()
	}
	if d := c.debt; d != nil {
		if d.err != nil {
			return 0, d.err
		}
		d.buf = append(d.buf, p...)
		return len(p), nil
	}
	n, err := c.sock.TryWrite(p)
	switch {
	case err == nil && n == len(p):
		return n, nil
	case err != nil && err != errWouldBlock:
		return n, err
	}
	c.debt = &debt{buf: slices.Clone(p[n:]), done: make(chan struct{})}
	if c.wg != nil {
		c.wg.Add(1)
	}
	go c.drain(c.debt) // ends when all is written, or at the deadline
	return len(p), nil
}

// owing reports whether earlier writes owe bytes (or failed).
func (c *waitConn) owing() bool {
	c.omu.Lock()
	defer c.omu.Unlock()
	return c.debt != nil
}

// settle waits until nothing is owed: the drainer has written it or
// failed (by the write deadline at the latest).
func (c *waitConn) settle() {
	c.omu.Lock()
	d := c.debt
	c.omu.Unlock()
	if d != nil {
		<-d.done
	}
}

// drain writes what d owes, waiting for the socket, until nothing is
// left or the write fails (at the deadline: the agent does not read).
func (c *waitConn) drain(d *debt) {
	if c.wg != nil {
		defer c.wg.Done()
	}
	var spare []byte // the buffer written last, for the next owed bytes
	for {
		c.omu.Lock()
		buf := d.buf
		if len(buf) == 0 {
			c.debt = nil
			c.omu.Unlock()
			close(d.done)
			if c.onDrained != nil {
				c.onDrained()
			}
			return
		}
		d.buf = spare[:0]
		c.omu.Unlock()
		dl := c.drainDeadline()
		c.Conn.SetWriteDeadline(dl)
		// An earlier deadline a caller set meanwhile (Shutdown's) was
		// overwritten: set it again. (One set after this applies anyway.)
		if again := c.drainDeadline(); again.Before(dl) {
			c.Conn.SetWriteDeadline(again)
		}
		if _, err := c.Conn.Write(buf); err != nil {
			c.omu.Lock()
			d.err, d.buf = err, nil // c.debt stays: later writes fail
			c.omu.Unlock()
			close(d.done)
			c.Conn.Close() // the session's reader ends it
			return
		}
		c.Conn.SetWriteDeadline(c.callerDeadline())
		spare = buf
	}
}

// drainDeadline is writeTimeout from now, or the caller's deadline if
// that is earlier.
func (c *waitConn) drainDeadline() time.Time {
	dl := time.Now().Add(c.writeTimeout)
	if caller := c.callerWrite.Load(); caller != 0 && caller < dl.UnixNano() {
		return time.Unix(0, caller)
	}
	return dl
}

// SetWriteDeadline sets the deadline of every write from now on, as
// net.Conn's does; Write's own, for a write that waits, never goes past
// it.
func (c *waitConn) SetWriteDeadline(t time.Time) error {
	if t.IsZero() {
		c.callerWrite.Store(0)
	} else {
		c.callerWrite.Store(t.UnixNano())
	}
	return c.Conn.SetWriteDeadline(t)
}

// callerDeadline is the deadline a caller set last (zero: none).
func (c *waitConn) callerDeadline() time.Time {
	if ns := c.callerWrite.Load(); ns != 0 {
		return time.Unix(0, ns)
	}
	return time.Time{}
}

// selfTimed reports whether Write bounds its own waits (the caller sets
// no deadline).
func (c *waitConn) selfTimed() bool { return c.nonblock && c.writeTimeout > 0 }

// await blocks until the socket has bytes or ends, and reads what it has
// (at most len(pend)) for the next reads. It honours the read deadline.
func (c *waitConn) await() error {
	c.pos, c.n = 0, 0
	n, readErr, err := c.sock.WaitRead(c.pend[:])
	c.n, c.pendErr = n, readErr
	c.drained = n < len(c.pend)
	return err
}

// frameReader reads an agent's frames. Where r does not block (TLS over
// a TCP socket that waitConn reads, a QUIC stream that quicReader reads)
// it answers errIdle when it has read all there is, keeping the part of
// a frame it has, and w waits; otherwise (Windows) it reads each frame
// straight from r, blocking.
type frameReader struct {
	r io.Reader
	w waiter // nil: r blocks

	buf        []byte // small, or larger for a HELLO; unread: buf[start:end]
	start, end int
	small      [wire.HeaderSize + 32]byte
	hdr        [wire.HeaderSize]byte
}

// waiter waits until the reader under a frameReader has bytes again
// (or fails: its deadline, the connection's end), reading some of them.
type waiter interface{ await() error }

// maxSmall is the largest body read into small: ACK, PING, PONG, BYE.
const maxSmall = len(frameReader{}.small) - wire.HeaderSize

// errIdle is next's answer when nothing is left to read without waiting
// for the socket: the caller waits with w.await (on a goroutine whose
// stack has not grown), then calls next again.
var errIdle = errors.New("push: waiting for the agent")

// next returns the next frame, whose body may be at most max bytes; the
// body is valid until the next call.
func (f *frameReader) next(max int) (byte, []byte, error) {
	if f.w == nil {
		return wire.ReadFrame(f.r, &f.hdr, f.small[:0], max)
	}
	if f.start == f.end { // nothing held: back to small (from a HELLO's)
		f.buf, f.start, f.end = f.small[:], 0, 0
	}
	for {
		b := f.buf[f.start:f.end]
		need := wire.HeaderSize
		if len(b) >= wire.HeaderSize {
			typ, n := wire.FrameHeader(b)
			if n > max {
				return typ, nil, wire.TooLarge(typ, n, max)
			}
			need += n
			if len(b) >= need {
				f.start += need
				return typ, b[wire.HeaderSize:need], nil
			}
		}
		// Read behind the part held, moved to the front, with room for
		// all of its frame.
		f.start, f.end = 0, copy(f.buf, b)
		if need > len(f.buf) {
			f.buf = append(make([]byte, 0, need), f.buf[:f.end]...)[:need]
		}
		n, err := f.r.Read(f.buf[f.end:])
		f.end += n
		switch {
		case errors.Is(err, errWouldBlock):
			return 0, nil, errIdle
		case err != nil && (n == 0 || !errors.Is(err, io.EOF)):
			return 0, nil, err
		case n == 0 && err == nil:
			return 0, nil, io.ErrNoProgress
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
		if err := f.w.await(); err != nil {
			return 0, nil, err
		}
	}
}
