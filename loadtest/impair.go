package loadtest

import (
	"container/heap"
	"encoding/json"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"time"
)

// The kernels we run on have no netem, so loss and delay are emulated
// here: a relay between a client and a target that impairs each
// direction on its own, reproducibly for a given seed.

// Impairment is what one direction suffers.
type Impairment struct {
	Loss    float64       // probability a datagram is dropped (UDP only)
	Delay   time.Duration // added to every datagram or chunk
	Jitter  time.Duration // plus uniform in [-Jitter, +Jitter]
	Reorder float64       // probability a datagram is held back by Delay/2 + Jitter more, landing after later ones (UDP)
	Rate    int64         // bytes per second; 0: unlimited
}

// MarshalJSON writes durations as Go duration strings ("40ms").
func (i Impairment) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		Loss    float64 `json:"loss"`
		Delay   string  `json:"delay"`
		Jitter  string  `json:"jitter"`
		Reorder float64 `json:"reorder"`
		Rate    int64   `json:"rate_bytes_per_s"`
	}{i.Loss, i.Delay.String(), i.Jitter.String(), i.Reorder, i.Rate})
}

// delayLine schedules what passes one direction.
type delayLine struct {
	mu       sync.Mutex
	imp      Impairment
	rnd      *rand.Rand
	nextFree time.Time // when the bandwidth cap lets the next byte out
	lastAt   time.Time // the latest release time given (ordered lines)
	q        releaseHeap
	seq      uint64
	wake     chan struct{}
	done     chan struct{}
	send     func(item)
}

type item struct {
	at   time.Time
	seq  uint64 // FIFO among equal times
	b    []byte
	to   netip.AddrPort
	conn *net.UDPConn
	done chan struct{} // a marker, not data: closed when released (what came before it is out)
}

type releaseHeap []item

func (h releaseHeap) Len() int { return len(h) }
func (h releaseHeap) Less(i, j int) bool {
	if h[i].at.Equal(h[j].at) {
		return h[i].seq < h[j].seq
	}
	return h[i].at.Before(h[j].at)
}
func (h releaseHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *releaseHeap) Push(x any)   { *h = append(*h, x.(item)) }
func (h *releaseHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	*h = old[:len(old)-1]
	return it
}

func newDelayLine(seed, stream uint64, send func(item)) *delayLine {
	d := &delayLine{rnd: rand.New(rand.NewPCG(seed, stream)), wake: make(chan struct{}, 1), done: make(chan struct{}), send: send}
	go d.run() // ends on close
	return d
}

func (d *delayLine) set(imp Impairment) {
	d.mu.Lock()
	d.imp = imp
	d.mu.Unlock()
}

// offer schedules it, or drops it (UDP loss). ordered keeps release times
// monotonic (a TCP byte stream must not be reordered).
func (d *delayLine) offer(it item, lossy, ordered bool) {
	now := time.Now()
	d.mu.Lock()
	imp := d.imp
	if lossy && imp.Loss > 0 && d.rnd.Float64() < imp.Loss {
		d.mu.Unlock()
		return
	}
	at := now.Add(imp.Delay)
	if imp.Jitter > 0 {
		at = at.Add(time.Duration((d.rnd.Float64()*2 - 1) * float64(imp.Jitter)))
	}
	if lossy && imp.Reorder > 0 && d.rnd.Float64() < imp.Reorder {
		at = at.Add(imp.Delay/2 + imp.Jitter + time.Millisecond)
	}
	if imp.Rate > 0 {
		d.nextFree = maxTime(d.nextFree, now).Add(time.Duration(float64(len(it.b)) / float64(imp.Rate) * float64(time.Second)))
		at = maxTime(at, d.nextFree)
	}
	if ordered {
		at = maxTime(at, d.lastAt)
		d.lastAt = at
	}
	it.at, it.seq = at, d.seq
	d.seq++
	heap.Push(&d.q, it)
	d.mu.Unlock()
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func (d *delayLine) run() {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		d.mu.Lock()
		var due []item
		now := time.Now()
		for len(d.q) > 0 && !d.q[0].at.After(now) {
			due = append(due, heap.Pop(&d.q).(item))
		}
		wait := time.Hour
		if len(d.q) > 0 {
			wait = d.q[0].at.Sub(now)
		}
		d.mu.Unlock()
		for _, it := range due {
			if it.done != nil {
				close(it.done)
				continue
			}
			d.send(it)
		}
		t.Reset(wait)
		select {
		case <-d.done:
			return
		case <-d.wake:
		case <-t.C:
		}
	}
}

func (d *delayLine) close() { close(d.done) }

// UDPRelay forwards datagrams between clients and one target, impairing
// each direction.
type UDPRelay struct {
	ln     *net.UDPConn
	target netip.AddrPort
	out    *delayLine // client -> target
	back   *delayLine // target -> client
	mu     sync.Mutex
	conns  map[netip.AddrPort]*net.UDPConn // client -> its socket towards the target
	closed chan struct{}
}

// NewUDPRelay listens on listen (e.g. 127.0.0.1:0) and relays to target.
func NewUDPRelay(listen, target string, seed uint64) (*UDPRelay, error) {
	la, err := net.ResolveUDPAddr("udp", listen)
	if err != nil {
		return nil, err
	}
	ta, err := net.ResolveUDPAddr("udp", target)
	if err != nil {
		return nil, err
	}
	ln, err := net.ListenUDP("udp", la)
	if err != nil {
		return nil, err
	}
	r := &UDPRelay{ln: ln, target: ta.AddrPort(), conns: map[netip.AddrPort]*net.UDPConn{}, closed: make(chan struct{})}
	r.out = newDelayLine(seed, 1, func(it item) { it.conn.Write(it.b) })
	r.back = newDelayLine(seed, 2, func(it item) { r.ln.WriteToUDPAddrPort(it.b, it.to) })
	go r.serve() // ends on Close
	return r, nil
}

// Addr is where clients send.
func (r *UDPRelay) Addr() string { return r.ln.LocalAddr().String() }

// Set changes the impairments of both directions at once.
func (r *UDPRelay) Set(out, back Impairment) {
	r.out.set(out)
	r.back.set(back)
}

func (r *UDPRelay) serve() {
	buf := make([]byte, 65536)
	for {
		n, from, err := r.ln.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		r.mu.Lock()
		c := r.conns[from]
		if c == nil {
			c, err = net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(r.target))
			if err != nil {
				r.mu.Unlock()
				continue
			}
			r.conns[from] = c
			go r.backward(c, from) // ends when c closes
		}
		r.mu.Unlock()
		r.out.offer(item{b: append([]byte(nil), buf[:n]...), conn: c}, true, false)
	}
}

func (r *UDPRelay) backward(c *net.UDPConn, client netip.AddrPort) {
	buf := make([]byte, 65536)
	for {
		n, err := c.Read(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		r.back.offer(item{b: append([]byte(nil), buf[:n]...), to: client}, true, false)
	}
}

// Close stops the relay.
func (r *UDPRelay) Close() error {
	err := r.ln.Close()
	r.mu.Lock()
	for _, c := range r.conns {
		c.Close()
	}
	r.mu.Unlock()
	r.out.close()
	r.back.close()
	return err
}

// TCPRelay forwards TCP connections to one target, delaying each
// direction's bytes (delay, jitter without reordering, bandwidth cap).
// Loss has no meaning for a byte stream and is ignored.
type TCPRelay struct {
	ln     net.Listener
	target string
	seed   uint64
	mu     sync.Mutex
	out    Impairment
	back   Impairment
	n      uint64
}

// NewTCPRelay listens on listen and relays to target.
func NewTCPRelay(listen, target string, seed uint64) (*TCPRelay, error) {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, err
	}
	r := &TCPRelay{ln: ln, target: target, seed: seed}
	go r.serve() // ends on Close
	return r, nil
}

// Addr is where clients connect.
func (r *TCPRelay) Addr() string { return r.ln.Addr().String() }

// Set changes the impairments for connections accepted from now on.
func (r *TCPRelay) Set(out, back Impairment) {
	r.mu.Lock()
	r.out, r.back = out, back
	r.mu.Unlock()
}

// Close stops accepting.
func (r *TCPRelay) Close() error { return r.ln.Close() }

func (r *TCPRelay) serve() {
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		r.mu.Lock()
		out, back := r.out, r.back
		r.n++
		stream := r.n * 2
		r.mu.Unlock()
		go func() { // ends when both directions end
			defer c.Close()
			u, err := net.Dial("tcp", r.target)
			if err != nil {
				return
			}
			defer u.Close()
			var wg sync.WaitGroup
			wg.Add(2)
			go func() { defer wg.Done(); r.pipe(u, c, out, stream) }()
			go func() { defer wg.Done(); r.pipe(c, u, back, stream+1) }()
			wg.Wait()
		}()
	}
}

// pipe copies src to dst through a delay line.
func (r *TCPRelay) pipe(dst, src net.Conn, imp Impairment, stream uint64) {
	errc := make(chan error, 1)
	d := newDelayLine(r.seed, stream, func(it item) {
		if _, err := dst.Write(it.b); err != nil {
			select {
			case errc <- err:
			default:
			}
		}
	})
	defer d.close()
	d.set(imp)
	buf := make([]byte, 32*1024)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			d.offer(item{b: append([]byte(nil), buf[:n]...)}, false, true)
		}
		if err != nil {
			// Let what is queued drain before closing the write side: the
			// line is ordered, so a marker comes out after all of it.
			drained := make(chan struct{})
			d.offer(item{done: drained}, false, true)
			<-drained
			if tc, ok := dst.(*net.TCPConn); ok && err == io.EOF {
				tc.CloseWrite()
			}
			return
		}
		select {
		case <-errc:
			return
		default:
		}
	}
}
