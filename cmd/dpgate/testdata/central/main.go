// Command central is the end-to-end tests' stand-in central server
// (cmd/dpgate's startCentral): TLS with the certificate file it is given,
// on a port of its own, which it prints as "central listening ADDR". A
// connection that starts with "SINK/SHA256\n" is counted and hashed and
// answered with "count sha256-hex" at its end; any other is echoed.
//
// "central send ADDR PIN BYTES" is the other end of such a relay, the
// upgrade test's agent: it connects to ADDR over TLS (the server's key
// pinned to PIN), sends BYTES pseudorandom bytes to a sink, the first
// half, then a line "sent HALF" on stdout and a wait for a line on stdin,
// then the rest; it prints "relayed BYTES" if the sink's count and hash
// are its own, else "error ..." (exit status 1).
//
// Both ends are built without the race detector, unlike the tests: the
// upgrade test relays 1 GiB, and under -race the range checks of those
// copies were most of its CPU.
package main

import (
	"bufio"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/dpgate/dpgate/internal/testutil"
	"github.com/dpgate/dpgate/tlsconf"
)

const sinkHello = "SINK/SHA256\n"

func main() {
	var err error
	switch {
	case len(os.Args) == 2:
		err = serve(os.Args[1])
	case len(os.Args) == 5 && os.Args[1] == "send":
		err = send(os.Args[2], os.Args[3], os.Args[4])
	default:
		fmt.Fprintln(os.Stderr, "usage: central CERTFILE | central send ADDR PIN BYTES")
		os.Exit(2)
	}
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
}

func serve(certFile string) error {
	id, err := tlsconf.LoadIdentity(certFile, "")
	if err != nil {
		return err
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", tlsconf.ServerConfig(id, nil))
	if err != nil {
		return err
	}
	fmt.Printf("central listening %s\n", ln.Addr())
	for {
		c, err := ln.Accept()
		if err != nil {
			return nil
		}
		go func() { // ends with its connection; the process is killed by the test
			defer c.Close()
			br := bufio.NewReader(c)
			if head, err := br.Peek(len(sinkHello)); err == nil && string(head) == sinkHello {
				br.Discard(len(sinkHello))
				h := sha256.New()
				n, _ := io.Copy(h, br)
				fmt.Fprintf(c, "%d %x", n, h.Sum(nil))
			} else {
				io.Copy(c, br)
			}
			c.(*tls.Conn).CloseWrite()
		}()
	}
}

func send(addr, pin, size string) error {
	n, err := strconv.ParseInt(size, 10, 64)
	if err != nil {
		return err
	}
	pins, err := tlsconf.ParsePins([]string{pin})
	if err != nil {
		return err
	}
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", addr, tlsconf.PinnedClientConfig(pins, "gateway"))
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := io.WriteString(c, sinkHello); err != nil {
		return err
	}
	h := sha256.New()
	src, w := testutil.Pseudorandom(), io.MultiWriter(c, h)
	buf := make([]byte, 256<<10)
	if _, err := io.CopyBuffer(w, io.LimitReader(src, n/2), buf); err != nil {
		return fmt.Errorf("in the first half: %w", err)
	}
	fmt.Printf("sent %d\n", n/2)
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		return fmt.Errorf("waiting to go on: %w", err)
	}
	if _, err := io.CopyBuffer(w, io.LimitReader(src, n-n/2), buf); err != nil {
		return fmt.Errorf("in the second half: %w", err)
	}
	if err := c.CloseWrite(); err != nil {
		return err
	}
	c.SetReadDeadline(time.Now().Add(60 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil {
		return fmt.Errorf("reading the sink's answer: %w", err)
	}
	if want := fmt.Sprintf("%d %x", n, h.Sum(nil)); string(got) != want {
		return fmt.Errorf("the central server got %q, want %q", got, want)
	}
	fmt.Printf("relayed %d\n", n)
	return nil
}
