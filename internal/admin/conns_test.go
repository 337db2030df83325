package admin

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/dpgate/dpgate/internal/testutil"
)

// TestConnectionsCapped: any local user may open connections to the
// admin API on loopback. Seen: 19,900 idle ones held 19,918 of the
// gateway's 20,000 open files, enough to stop agents being accepted
// (each is closed after ReadHeaderTimeout, so a flood reopens them). The
// server now holds at most MaxConns: past it the oldest connection that
// has not sent a request, or sits idle between requests, is closed to
// make room (as nginx reuses keep-alive connections), and a request
// still gets through.
func TestConnectionsCapped(t *testing.T) {
	s := New(Config{Token: "a-token-of-some-length", MaxConns: 8})
	s.Handle("GET /v1/ping", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "pong") }))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(ln) // ends with Close
	defer s.Close()
	var idle []net.Conn
	defer func() {
		for _, c := range idle {
			c.Close()
		}
	}()
	for range 50 { // no request on any
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		idle = append(idle, c)
	}
	testutil.WaitFor(t, 10*time.Second, func() error {
		if n := s.openConns(); n > 8 {
			return fmt.Errorf("%d connections held, want at most 8", n)
		}
		closed := 0
		for _, c := range idle {
			c.SetReadDeadline(time.Now().Add(time.Millisecond))
			if _, err := c.Read(make([]byte, 1)); err == io.EOF {
				closed++
			}
		}
		if closed < 42 {
			return fmt.Errorf("%d of 50 idle connections closed by the server, want at least 42", closed)
		}
		return nil
	})
	c := NewClient(ln.Addr().String(), "a-token-of-some-length")
	for i := range 20 {
		body, err := c.Raw(context.Background(), "GET", "/v1/ping", nil)
		if err != nil || string(body) != "pong" {
			t.Fatalf("request %d with the limit reached: %q, %v", i, body, err)
		}
	}
}
