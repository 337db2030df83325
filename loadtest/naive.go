package loadtest

import (
	"bufio"
	"crypto/tls"
	"net"

	"github.com/dpgate/dpgate/push/wire"
)

// NaivePushServer is the memory baseline for the push server: the
// obvious goroutine-per-connection crypto/tls server with a 4 KiB
// bufio reader and writer per connection. It speaks just enough of the
// protocol (HELLO, WELCOME, PING, PONG) for agents to connect and stay.
type NaivePushServer struct{ TLS *tls.Config }

// Serve accepts until ln is closed.
func (s NaivePushServer) Serve(ln net.Listener) error {
	cfg := s.TLS.Clone()
	cfg.NextProtos = []string{wire.ALPN}
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go s.handle(tls.Server(c, cfg)) // one goroutine per connection, for its whole life
	}
}

func (s NaivePushServer) handle(c *tls.Conn) {
	defer c.Close()
	r := bufio.NewReaderSize(c, 4096)
	w := bufio.NewWriterSize(c, 4096)
	var hdr [wire.HeaderSize]byte
	buf := make([]byte, 0, 512)
	typ, _, err := wire.ReadFrame(r, &hdr, buf, 2048)
	if err != nil || typ != wire.TypeHello {
		return
	}
	w.Write((&wire.Welcome{Version: wire.Version, Keepalive: 30}).Marshal())
	if w.Flush() != nil {
		return
	}
	for {
		typ, body, err := wire.ReadFrame(r, &hdr, buf, 2048)
		if err != nil {
			return
		}
		if typ == wire.TypePing {
			v, _ := wire.ParseU64(body)
			w.Write(wire.MarshalU64(wire.TypePong, v))
			if w.Flush() != nil {
				return
			}
		}
	}
}
