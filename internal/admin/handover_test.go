package admin

import (
	"bufio"
	"context"
	"errors"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/dpgate/dpgate/internal/testutil"
)

// TestHandOverAnswersAcceptedConnections: a connection the server had
// accepted whose request arrives only after the handover began is still
// answered. With http.Server.Shutdown it was closed unanswered (the
// client saw EOF: TestUpgradeDropsNothing failed so once in CI), since
// Shutdown drops requests read after it began.
func TestHandOverAnswersAcceptedConnections(t *testing.T) {
	s := New(Config{Token: "t"})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }() // ends at the handover
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	testutil.WaitFor(t, 10*time.Second, func() error { // accepted and tracked
		s.mu.Lock()
		defer s.mu.Unlock()
		if len(s.busy) == 0 {
			return errors.New("the connection is not accepted yet")
		}
		return nil
	})
	handed := make(chan error, 1)
	go func() { // ends once the connection is answered, or at the deadline
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		handed <- s.HandOver(ctx)
	}()
	if err := <-served; err != nil {
		t.Fatalf("Serve after the handover: %v, want nil", err)
	}
	// The listener is closed now; the request comes only now.
	if _, err := c.Write([]byte("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("a request on a connection accepted before the handover: %v, want an answer", err)
	}
	resp.Body.Close() // any status: no route is registered here
	c.Close()
	if err := <-handed; err != nil {
		t.Errorf("HandOver: %v", err)
	}
}
