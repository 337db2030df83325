// Command central is the end-to-end tests' stand-in central server
// (cmd/dpgate's startCentral): TLS with the certificate file it is given,
// on a port of its own, which it prints as "central listening ADDR". A
// connection that starts with "SINK/SHA256\n" is counted and hashed and
// answered with "count sha256-hex" at its end; any other is echoed. It
// is built without the race detector, unlike the tests: the upgrade test
// relays 1 GiB through it, and under -race the range checks of those
// copies were most of its CPU.
package main

import (
	"bufio"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"io"
	"os"

	"github.com/dpgate/dpgate/tlsconf"
)

const sinkHello = "SINK/SHA256\n"

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: central CERTFILE")
		os.Exit(2)
	}
	id, err := tlsconf.LoadIdentity(os.Args[1], "")
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", tlsconf.ServerConfig(id, nil))
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	fmt.Printf("central listening %s\n", ln.Addr())
	for {
		c, err := ln.Accept()
		if err != nil {
			os.Exit(0)
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
