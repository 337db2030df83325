package cluster

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	sockaddr "github.com/hashicorp/go-sockaddr"
	"github.com/hashicorp/memberlist"
)

// transport is memberlist's Transport over a TCP listener and a UDP socket
// that the caller opened (the gateway, so that they pass to the next
// process in an upgrade like every other socket). It does what
// memberlist's own NetTransport does on one address: packets in and out
// on the UDP socket, streams accepted on the listener and dialed with TCP.
// Shutdown closes both sockets.
type transport struct {
	stream  net.Listener
	packets net.PacketConn
	packetC chan *memberlist.Packet
	streamC chan net.Conn
	done    chan struct{}
	once    sync.Once
	wg      sync.WaitGroup
	log     func(msg string, args ...any)
}

// maxPacket is the largest UDP datagram.
const maxPacket = 65536

func newTransport(stream net.Listener, packets net.PacketConn, log func(string, ...any)) *transport {
	t := &transport{stream: stream, packets: packets, log: log,
		packetC: make(chan *memberlist.Packet), streamC: make(chan net.Conn), done: make(chan struct{})}
	if uc, ok := packets.(*net.UDPConn); ok {
		// memberlist's choice: a large receive buffer for gossip bursts,
		// as large as the system allows.
		for size := 2 << 20; size > 0; size /= 2 {
			if uc.SetReadBuffer(size) == nil {
				break
			}
		}
	}
	t.wg.Add(2)
	go t.readPackets() // end when Shutdown closes the sockets
	go t.acceptStreams()
	return t
}

func (t *transport) readPackets() {
	defer t.wg.Done()
	for {
		buf := make([]byte, maxPacket)
		n, from, err := t.packets.ReadFrom(buf)
		at := time.Now()
		if err != nil {
			if t.closed() {
				return
			}
			t.log("cluster: reading a gossip packet failed", "err", err)
			continue
		}
		if n == 0 {
			continue
		}
		select {
		case t.packetC <- &memberlist.Packet{Buf: buf[:n], From: from, Timestamp: at}:
		case <-t.done:
			return
		}
	}
}

func (t *transport) acceptStreams() {
	defer t.wg.Done()
	delay := time.Duration(0)
	for {
		c, err := t.stream.Accept()
		if err != nil {
			if t.closed() {
				return
			}
			// e.g. out of descriptors: back off up to a second, as
			// NetTransport does, rather than spin.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			t.log("cluster: accepting a gossip stream failed", "err", err)
			select {
			case <-time.After(delay):
			case <-t.done:
				return
			}
			continue
		}
		delay = 0
		select {
		case t.streamC <- c:
		case <-t.done:
			c.Close()
			return
		}
	}
}

func (t *transport) closed() bool {
	select {
	case <-t.done:
		return true
	default:
		return false
	}
}

// FinalAdvertiseAddr is the configured address, else the one the socket is
// bound to, else (bound to every interface) the host's first private
// address, as memberlist's NetTransport chooses.
func (t *transport) FinalAdvertiseAddr(ip string, port int) (net.IP, int, error) {
	bound, ok := t.stream.Addr().(*net.TCPAddr)
	if !ok {
		return nil, 0, fmt.Errorf("cluster: gossip listener is %T, want TCP", t.stream.Addr())
	}
	if port == 0 {
		port = bound.Port
	}
	addr := bound.IP
	switch {
	case ip != "":
		if addr = net.ParseIP(ip); addr == nil {
			return nil, 0, fmt.Errorf("cluster: advertise address %q is not an IP address", ip)
		}
	case addr.IsUnspecified():
		private, err := sockaddr.GetPrivateIP()
		if err != nil {
			return nil, 0, fmt.Errorf("cluster: finding a private address to advertise: %w", err)
		}
		if addr = net.ParseIP(private); addr == nil {
			return nil, 0, errors.New("cluster: no private IP address to advertise: set cluster.advertise")
		}
	}
	if v4 := addr.To4(); v4 != nil {
		addr = v4
	}
	return addr, port, nil
}

func (t *transport) WriteTo(b []byte, addr string) (time.Time, error) {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return time.Time{}, err
	}
	_, err = t.packets.WriteTo(b, ua)
	return time.Now(), err
}

func (t *transport) PacketCh() <-chan *memberlist.Packet { return t.packetC }

func (t *transport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	return net.DialTimeout("tcp", addr, timeout)
}

func (t *transport) StreamCh() <-chan net.Conn { return t.streamC }

// Shutdown closes the sockets and waits for the reading goroutines.
func (t *transport) Shutdown() error {
	var err error
	t.once.Do(func() {
		close(t.done)
		err = errors.Join(t.stream.Close(), t.packets.Close())
		t.wg.Wait()
	})
	return err
}

var _ memberlist.Transport = (*transport)(nil)
