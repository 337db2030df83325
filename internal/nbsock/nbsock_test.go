//go:build unix

package nbsock

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/dpgate/dpgate/internal/testutil"
)

// TestReads: TryRead says ErrWouldBlock on an empty socket and returns
// what arrived otherwise; WaitRead waits for bytes, keeps the read's own
// end apart from the wait's failure, and honours the read deadline.
func TestReads(t *testing.T) {
	c, peer := tcpPair(t)
	s, ok := Open(c)
	if !ok {
		t.Fatal("Open refused a TCP connection")
	}
	if _, ok := Open(struct{ net.Conn }{c}); ok {
		t.Error("Open took a connection that is not a *net.TCPConn")
	}
	buf := make([]byte, 8)
	if n, err := s.TryRead(buf); n != 0 || !errors.Is(err, ErrWouldBlock) {
		t.Fatalf("TryRead of an empty socket: %d, %v", n, err)
	}
	if ne, ok := ErrWouldBlock.(interface{ Temporary() bool }); !ok || !ne.Temporary() {
		t.Error("ErrWouldBlock is not temporary: crypto/tls would end the connection")
	}

	go peer.Write([]byte("hello"))
	n, readErr, err := s.WaitRead(buf)
	if err != nil || readErr != nil || string(buf[:n]) != "hello" {
		t.Fatalf("WaitRead: %q, %v, %v", buf[:n], readErr, err)
	}

	peer.Write([]byte("0123456789"))
	got := ""
	testutil.WaitFor(t, 10*time.Second, func() error { // polls, a try at a time
		n, err := s.TryRead(buf)
		if err != nil && !errors.Is(err, ErrWouldBlock) {
			t.Fatal(err)
		}
		if got += string(buf[:n]); len(got) < 10 {
			return fmt.Errorf("TryRead collected %q so far", got)
		}
		return nil
	})
	if got != "0123456789" {
		t.Fatalf("TryRead collected %q", got)
	}

	c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, _, err := s.WaitRead(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("WaitRead past the deadline: %v", err)
	}
	c.SetReadDeadline(time.Time{})

	peer.Close()
	if n, readErr, err := s.WaitRead(buf); n != 0 || err != nil || readErr != io.EOF {
		t.Fatalf("WaitRead after the peer closed: %d, %v, %v", n, readErr, err)
	}
}

// TestTryWrite: TryWrite writes what the socket takes without waiting,
// says ErrWouldBlock once the peer's and its own buffers are full, and
// honours a write deadline that has passed.
func TestTryWrite(t *testing.T) {
	c, peer := tcpPair(t)
	s, _ := Open(c)
	if n, err := s.TryWrite([]byte("hello")); n != 5 || err != nil {
		t.Fatalf("TryWrite on an empty socket: %d, %v; want 5, nil", n, err)
	}
	got := make([]byte, 5)
	peer.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(peer, got); err != nil || string(got) != "hello" {
		t.Fatalf("the peer read %q, %v", got, err)
	}
	// The peer reads nothing more: at most 256 MiB until the buffers
	// are full.
	chunk := make([]byte, 1<<20)
	blocked := false
	for range 256 {
		n, err := s.TryWrite(chunk)
		if errors.Is(err, ErrWouldBlock) {
			blocked = true
			break
		}
		if err != nil || n == 0 {
			t.Fatalf("TryWrite: %d, %v", n, err)
		}
	}
	if !blocked {
		t.Fatal("256 MiB written to a peer that reads nothing, and no ErrWouldBlock")
	}
	c.SetWriteDeadline(time.Now().Add(-time.Second))
	if _, err := s.TryWrite([]byte("x")); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("TryWrite after the write deadline: %v, want os.ErrDeadlineExceeded", err)
	}
}

// tcpPair is a connected pair of TCP connections on loopback: c, the
// accepted one, and the peer that dialled it.
func tcpPair(t *testing.T) (c, peer net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	peer, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { peer.Close() })
	c, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, peer
}
