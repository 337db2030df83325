package gateway

import (
	"fmt"
	"io"
	"net"

	"github.com/dpgate/dpgate/internal/admin"
	"github.com/dpgate/dpgate/internal/config"
)

// Listeners are the sockets a gateway serves on, opened by Listen or
// handed in by tests.
type Listeners struct {
	Admin       net.Listener   // nil: admin API off
	AdminSocket net.Listener   // admin.socket; nil: off
	Proxy       net.Listener   // nil: proxy off (no upstream)
	Push        net.Listener   // nil: push off
	PushUDP     net.PacketConn // nil: push over QUIC off
	DNSUDP      net.PacketConn // nil: DNS off
	DNSTCP      net.Listener
	WakeUDP     net.PacketConn // wake requests; nil: off
	ShutdownUDP net.PacketConn // agents' shutdown notices; nil: off
	Reflector   *net.UDPConn   // STAMP reflector; nil: off
	ClusterTCP  net.Listener   // gossip streams (cluster.bind); nil: no cluster
	ClusterUDP  net.PacketConn // gossip packets, the same port
}

// Sockets hands out listening sockets: a fresh one by calling open, or
// one inherited from the process this one replaces (an upgrade; see
// cloudflare/tableflip's Fds, whose ListenWithCallback and
// ListenPacketWithCallback have these signatures).
type Sockets interface {
	ListenWithCallback(network, addr string, open func(network, addr string) (net.Listener, error)) (net.Listener, error)
	ListenPacketWithCallback(network, addr string, open func(network, addr string) (net.PacketConn, error)) (net.PacketConn, error)
}

// freshSockets opens every socket anew.
type freshSockets struct{}

func (freshSockets) ListenWithCallback(network, addr string, open func(string, string) (net.Listener, error)) (net.Listener, error) {
	return open(network, addr)
}

func (freshSockets) ListenPacketWithCallback(network, addr string, open func(string, string) (net.PacketConn, error)) (net.PacketConn, error) {
	return open(network, addr)
}

// Listen opens the listeners the configuration asks for.
func Listen(cfg *config.Config) (Listeners, error) { return ListenFrom(cfg, freshSockets{}) }

// ListenFrom is Listen taking its sockets from socks, so that a new
// process can serve on the sockets of the one it replaces.
func ListenFrom(cfg *config.Config, socks Sockets) (Listeners, error) {
	var ls Listeners
	var listenPacketWith func(key, addr string, open func(string, string) (net.PacketConn, error)) (net.PacketConn, error)
	// A socket is known by its configuration key and address, so that
	// two keys on port 0 are two sockets, and a changed address a new one.
	// (A Unix socket by its path alone: tableflip unlinks that path when
	// it closes the socket for good.)
	listen := func(key, network, addr string, open func(string, string) (net.Listener, error)) (net.Listener, error) {
		name := key + " " + addr
		if network == "unix" {
			name = addr
		}
		ln, err := socks.ListenWithCallback(network, name, func(string, string) (net.Listener, error) { return open(network, addr) })
		if err != nil {
			ls.Close()
			return nil, fmt.Errorf("gateway: %s: %w", key, err)
		}
		return ln, nil
	}
	listenPacket := func(key, addr string) (net.PacketConn, error) {
		return listenPacketWith(key, addr, net.ListenPacket)
	}
	listenPacketWith = func(key, addr string, open func(string, string) (net.PacketConn, error)) (net.PacketConn, error) {
		pc, err := socks.ListenPacketWithCallback("udp", key+" "+addr, func(string, string) (net.PacketConn, error) { return open("udp", addr) })
		if err != nil {
			ls.Close()
			return nil, fmt.Errorf("gateway: %s: %w", key, err)
		}
		return pc, nil
	}
	var err error
	if config.Enabled(cfg.Admin.Listen) {
		if ls.Admin, err = listen("admin.listen", "tcp", cfg.Admin.Listen, net.Listen); err != nil {
			return ls, err
		}
	}
	if cfg.Admin.Socket != "" {
		open := func(string, string) (net.Listener, error) { return admin.ListenSocket(cfg.Admin.Socket) }
		if ls.AdminSocket, err = listen("admin.socket", "unix", cfg.Admin.Socket, open); err != nil {
			return ls, err
		}
	}
	if cfg.ProxyEnabled() {
		if ls.Proxy, err = listen("proxy.listen", "tcp", cfg.Proxy.Listen, net.Listen); err != nil {
			return ls, err
		}
	}
	if config.Enabled(cfg.Push.Listen) {
		open := net.Listen
		if *cfg.Push.QUIC { // QUIC takes the same port number on UDP
			open = paired(net.Listen, func(ln net.Listener) string { return ln.Addr().String() }, "udp")
		}
		if ls.Push, err = listen("push.listen", "tcp", cfg.Push.Listen, open); err != nil {
			return ls, err
		}
		if *cfg.Push.QUIC {
			// The same port number on UDP: the one TCP got, if it was 0.
			if ls.PushUDP, err = listenPacket("push.listen (QUIC, UDP)", ls.Push.Addr().String()); err != nil {
				return ls, err
			}
		}
		if config.Enabled(cfg.Wake.Listen) {
			if ls.WakeUDP, err = listenPacket("wake.listen", cfg.Wake.Listen); err != nil {
				return ls, err
			}
		}
		if config.Enabled(cfg.Wake.ShutdownListen) {
			if ls.ShutdownUDP, err = listenPacket("wake.shutdown_listen", cfg.Wake.ShutdownListen); err != nil {
				return ls, err
			}
		}
	}
	if cfg.Link.ReflectorListen != "" {
		pc, err := listenPacket("link.reflector_listen", cfg.Link.ReflectorListen)
		if err != nil {
			return ls, err
		}
		var ok bool
		if ls.Reflector, ok = pc.(*net.UDPConn); !ok {
			pc.Close()
			ls.Close()
			return ls, fmt.Errorf("gateway: link.reflector_listen: got a %T, want a UDP socket", pc)
		}
	}
	if cfg.Cluster.Bind != "" {
		open := paired(net.Listen, func(ln net.Listener) string { return ln.Addr().String() }, "udp")
		if ls.ClusterTCP, err = listen("cluster.bind (TCP)", "tcp", cfg.Cluster.Bind, open); err != nil {
			return ls, err
		}
		if ls.ClusterUDP, err = listenPacket("cluster.bind (UDP)", ls.ClusterTCP.Addr().String()); err != nil {
			return ls, err
		}
	}
	if cfg.Cluster.DNS.Listen != "" {
		if ls.DNSUDP, err = listenPacketWith("cluster.dns.listen (UDP)", cfg.Cluster.DNS.Listen, paired(net.ListenPacket, func(pc net.PacketConn) string { return pc.LocalAddr().String() }, "tcp")); err != nil {
			return ls, err
		}
		if ls.DNSTCP, err = listen("cluster.dns.listen (TCP)", "tcp", ls.DNSUDP.LocalAddr().String(), net.Listen); err != nil {
			return ls, err
		}
	}
	return ls, nil
}

// paired opens a socket with open; on port 0, one whose number is free
// on the other network too, where a second socket takes the same number
// (QUIC beside TLS, DNS over TCP beside UDP). Without that check the
// second bind failed now and then with "address already in use"
// (TestGatewaysFormACluster).
func paired[S io.Closer](open func(network, addr string) (S, error), local func(S) string, other string) func(network, addr string) (S, error) {
	return func(network, addr string) (S, error) {
		for range 20 {
			s, err := open(network, addr)
			if err != nil || !portZero(addr) || freeOn(other, local(s)) {
				return s, err
			}
			s.Close()
		}
		return open(network, addr)
	}
}

func portZero(addr string) bool {
	_, port, err := net.SplitHostPort(addr)
	return err == nil && port == "0"
}

// freeOn reports whether addr can be bound on network now.
func freeOn(network, addr string) bool {
	var c io.Closer
	var err error
	if network == "udp" {
		c, err = net.ListenPacket(network, addr)
	} else {
		c, err = net.Listen(network, addr)
	}
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// Close closes every listener that is open.
func (ls Listeners) Close() {
	for _, ln := range []net.Listener{ls.Admin, ls.AdminSocket, ls.Proxy, ls.Push, ls.DNSTCP, ls.ClusterTCP} {
		if ln != nil {
			ln.Close()
		}
	}
	if ls.Reflector != nil {
		ls.Reflector.Close()
	}
	for _, pc := range []net.PacketConn{ls.PushUDP, ls.DNSUDP, ls.WakeUDP, ls.ShutdownUDP, ls.ClusterUDP} {
		if pc != nil {
			pc.Close()
		}
	}
}
