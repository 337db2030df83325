// Package pending lists the connections a server has accepted and
// counted but whose handshake is not done, oldest first, so that at its
// connection limit the server can close the one longest in its
// handshake and give its place to a new one. Without that, connections
// that open and send nothing (a slowloris: one source address holds its
// accept rate times the handshake timeout of them, a local user any
// number) keep every client out while they last, and for as long as a
// flood goes on. A client's handshake takes milliseconds, so the oldest
// are the stalled ones.
package pending

import (
	"container/list"
	"net"
	"sync"
	"time"
)

// Conn is what a List holds and closes: a net.Conn, or an adapter (a
// QUIC connection). It must be comparable (a pointer).
type Conn interface {
	Close() error
	RemoteAddr() net.Addr
}

// List is the connections in their handshake. The zero value is not
// usable; use New.
type List struct {
	mu    sync.Mutex
	m     map[Conn]*entry
	order *list.List // of *entry not evicted, oldest first
}

type entry struct {
	c       Conn
	since   time.Time
	evicted bool          // closed to make room: its place went to another
	el      *list.Element // in order, until evicted
}

// New returns an empty list.
func New() *List { return &List{m: map[Conn]*entry{}, order: list.New()} }

// Add lists c, whose handshake begins now.
func (l *List) Add(c Conn) {
	e := &entry{c: c, since: time.Now()}
	l.mu.Lock()
	e.el = l.order.PushBack(e)
	l.m[c] = e
	l.mu.Unlock()
}

// Remove ends c's listing (its handshake is done, or failed) and reports
// whether c was closed to make room: its place under the limit is then
// another's, and the caller does not give it back. A c never listed
// reports false.
func (l *List) Remove(c Conn) (evicted bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.m[c]
	if e == nil {
		return false
	}
	delete(l.m, c)
	if !e.evicted {
		l.order.Remove(e.el)
	}
	return e.evicted
}

// Settle ends c's listing as its handshake is done, so that it can no
// longer be evicted, and reports true; for a c already evicted it
// reports false and leaves it listed, for Remove to report when the
// caller gives it up. A c never listed reports true.
func (l *List) Settle(c Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.m[c]
	if e == nil {
		return true
	}
	if e.evicted {
		return false
	}
	delete(l.m, c)
	l.order.Remove(e.el)
	return true
}

// EvictAfter is the age servers evict at (Evict): a client's handshake
// takes milliseconds, so one in it for over a second is stalled.
const EvictAfter = time.Second

// Evict closes the connection longest in its handshake if that began
// over age ago, and returns it (nil: none is that old). Its place is the
// caller's: Remove reports it evicted to whoever holds it.
func (l *List) Evict(age time.Duration) Conn {
	l.mu.Lock()
	front := l.order.Front()
	if front == nil || time.Since(front.Value.(*entry).since) <= age {
		l.mu.Unlock()
		return nil
	}
	e := front.Value.(*entry)
	e.evicted = true
	l.order.Remove(front)
	l.mu.Unlock()
	e.c.Close()
	return e.c
}
