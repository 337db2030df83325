// Package testutil holds the helpers dpgate's tests share: polling for a
// condition instead of sleeping, and a logger that discards.
package testutil

import (
	"io"
	"log/slog"
	"testing"
	"time"
)

// WaitFor polls cond every 10 ms until it returns nil, and fails the test
// with cond's last error once timeout has passed. Tests use it instead of
// sleeping for something to happen (nats-server's checkFor).
func WaitFor(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("gave up after %v: %v", timeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Quiet is a logger that discards everything.
func Quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
