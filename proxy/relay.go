package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/dpgate/dpgate/internal/nbsock"
)

// Buffers: a read first goes into the relay's small buffer; only when a
// read fills it (bulk traffic) does the direction switch to a pooled
// large buffer, and it returns the large buffer once the source has
// nothing more (a read that gathers finds the socket empty; where reads
// cannot gather, a read that comes back short, except the one right
// after the switch, which gets the rest of the record the small buffer
// began). An idle relay so holds 2 x smallBuf, not 2 x largeBuf.
const (
	smallBuf = 1 << 10
	largeBuf = 16 << 10 // one TLS record of plaintext
)

var largePool = sync.Pool{New: func() any { b := make([]byte, largeBuf); return &b }}

// errIdle ends a relay that saw no traffic either way for IdleTimeout.
var errIdle = errors.New("idle timeout")

// halfCloser is a connection that can end its write side alone
// (*tls.Conn sends close_notify, *net.TCPConn shuts down writes).
type halfCloser interface {
	net.Conn
	CloseWrite() error
}

// relay copies between the agent and the upstream until both sides have
// finished, one fails, or neither sent anything for idle.
type relay struct {
	idle    time.Duration
	last    atomic.Int64 // unix ns of the last byte either way
	shaper  *rate.Limiter
	in, out *atomic.Int64 // counts bytes written agent->upstream, upstream->agent
	stopped atomic.Bool   // one direction failed: the other must not re-arm
	small   [2][smallBuf]byte
}

// run relays until done and returns the error that ended it (nil for a
// clean close on both sides). It closes neither connection.
func (r *relay) run(agent, up halfCloser) error {
	r.last.Store(time.Now().UnixNano())
	errc := make(chan error, 1)
	// The upstream->agent half runs in its own goroutine, which exits when
	// that direction ends; run waits for it below.
	go func() { errc <- r.pipe(up, agent, r.out, nil, r.small[1][:]) }()
	err := r.pipe(agent, up, r.in, r.shaper, r.small[0][:])
	if err != nil {
		r.stop(agent, up) // unblock the other direction
		<-errc
		return err
	}
	// This half ended cleanly; the other may still be sending.
	if err = <-errc; err != nil {
		r.stop(agent, up)
	}
	return err
}

// stop makes every blocked Read and Write on both connections return.
func (r *relay) stop(a, b net.Conn) {
	r.stopped.Store(true)
	past := time.Unix(1, 0)
	a.SetDeadline(past)
	b.SetDeadline(past)
}

// keepStopped undoes a deadline just set on c when stop ran meanwhile:
// its deadline in the past must win, or a Read or Write re-armed after it
// blocks until the idle timeout (Proxy.Close then waited for that relay
// for up to 10 minutes).
func (r *relay) keepStopped(c net.Conn) {
	if r.stopped.Load() {
		c.SetDeadline(time.Unix(1, 0))
	}
}

// pipe copies src to dst until src ends (then half-closes dst) or an error.
func (r *relay) pipe(src, dst halfCloser, count *atomic.Int64, shaper *rate.Limiter, small []byte) error {
	var large *[]byte
	defer func() {
		if large != nil {
			largePool.Put(large)
		}
	}()
	ss, ds := sockOf(src), sockOf(dst)
	gathers := ss != nil && ds != nil && ss.gathers()
	var armed, wArmed time.Time
	fresh := false // large was just taken: this read gets the rest of a record
	for {
		buf := small
		if large != nil {
			buf = *large
		}
		now := time.Now()
		if now.Sub(armed) > r.idle/8 { // re-arm coarsely, not on every read
			src.SetReadDeadline(now.Add(r.idle))
			armed = now
			r.keepStopped(src)
		}
		n, err := src.Read(buf)
		if n > 0 {
			if now := time.Now(); now.Sub(wArmed) > r.idle/8 { // coarsely too
				dst.SetWriteDeadline(now.Add(r.idle))
				wArmed = now
				r.keepStopped(dst)
			}
			bulk := n == len(buf) || large != nil
			var werr error
			switch {
			case bulk && gathers:
				if large == nil {
					large = largePool.Get().(*[]byte)
				}
				var drained bool
				drained, err, werr = r.gather(src, dst, ss, ds, buf[:n], *large, count, shaper)
				if drained { // src has nothing more: back to small for the wait
					largePool.Put(large)
					large = nil
				}
			default:
				werr = r.forward(dst, buf[:n], count, shaper)
				switch {
				case n == len(buf) && large == nil:
					large, fresh = largePool.Get().(*[]byte), true
				case n < len(buf) && large != nil && !fresh:
					largePool.Put(large)
					large = nil
				default:
					fresh = false
				}
			}
			if werr != nil {
				return werr
			}
			r.last.Store(time.Now().UnixNano())
		}
		if err == nil {
			continue
		}
		if errors.Is(err, io.EOF) {
			return dst.CloseWrite()
		}
		if errors.Is(err, os.ErrDeadlineExceeded) && !r.stopped.Load() {
			last := time.Unix(0, r.last.Load())
			if time.Since(last) < r.idle {
				// The other direction was busy: not idle yet.
				src.SetReadDeadline(last.Add(r.idle))
				armed = time.Now()
				r.keepStopped(src)
				continue
			}
			return errIdle
		}
		return err
	}
}

// forward writes b to dst (at the shaper's pace) and counts it.
func (r *relay) forward(dst halfCloser, b []byte, count *atomic.Int64, shaper *rate.Limiter) error {
	if shaper != nil {
		if err := shaper.WaitN(context.Background(), len(b)); err != nil {
			return err
		}
	}
	if _, err := dst.Write(b); err != nil {
		return err
	}
	count.Add(int64(len(b)))
	return nil
}

// gather forwards first, and after it what src has already received,
// read into buf up to batchBytes in all, without waiting for more: the
// records go out in one write (sock.go). drained says src had nothing
// more; rerr is src's error if a read ended it (io.EOF included), werr
// dst's.
func (r *relay) gather(src, dst halfCloser, ss, ds *sock, first, buf []byte, count *atomic.Int64, shaper *rate.Limiter) (drained bool, rerr, werr error) {
	ds.hold()
	werr = r.forward(dst, first, count, shaper)
	ss.nonblock = true
	for total, n := len(first), 0; werr == nil && total < batchBytes; total += n {
		n, rerr = src.Read(buf)
		if n > 0 {
			werr = r.forward(dst, buf[:n], count, shaper)
		}
		if rerr != nil {
			break
		}
	}
	ss.nonblock = false
	if errors.Is(rerr, nbsock.ErrWouldBlock) {
		drained, rerr = true, nil
	}
	if err := ds.send(); werr == nil {
		werr = err
	}
	return drained, rerr, werr
}

// sockOf is the sock under c's TLS, or nil.
func sockOf(c halfCloser) *sock {
	if nc, ok := c.(interface{ NetConn() net.Conn }); ok {
		s, _ := nc.NetConn().(*sock)
		return s
	}
	return nil
}
