package testutil

import (
	"bytes"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// TestServeEndsWithItsTest: a handler still reading from a client that
// never closes ends when the test does, the echo worked meanwhile, and
// the listener is closed.
func TestServeEndsWithItsTest(t *testing.T) {
	var addr string
	var handled atomic.Int32
	done := make(chan bool, 1)
	go func() { // ends when the subtest has run its cleanups
		done <- t.Run("serve", func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			addr = Serve(t, ln, func(c net.Conn) { Echo(c); handled.Add(1) })
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			io.WriteString(c, "hi")
			buf := make([]byte, 2)
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "hi" {
				t.Fatalf("echo: %q, %v", buf, err)
			}
			// c stays open: the cleanup must end the handler itself.
		})
	}()
	select {
	case ok := <-done:
		if !ok {
			t.Fatal("the subtest failed")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Serve's cleanup did not end a handler whose client stayed connected")
	}
	if handled.Load() != 1 {
		t.Errorf("%d handlers returned, want 1", handled.Load())
	}
	if c, err := net.DialTimeout("tcp", addr, 5*time.Second); err == nil {
		c.Close()
		t.Errorf("the listener at %s still accepts after the test", addr)
	}
}

// TestPseudorandom: the stream is the same every time, and not a short
// pattern repeated (no 4 KiB block of the first MiB equals another).
func TestPseudorandom(t *testing.T) {
	a, b := make([]byte, 1<<20), make([]byte, 1<<20)
	io.ReadFull(Pseudorandom(), a)
	io.ReadFull(Pseudorandom(), b)
	if !bytes.Equal(a, b) {
		t.Fatal("two streams differ")
	}
	seen := map[string]bool{}
	for off := 0; off < len(a); off += 4096 {
		block := string(a[off : off+4096])
		if seen[block] {
			t.Fatalf("the 4 KiB block at %d repeats an earlier one", off)
		}
		seen[block] = true
	}
}
