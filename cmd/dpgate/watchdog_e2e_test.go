//go:build linux

package main

import (
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dpgate/dpgate/internal/testutil"
)

// TestWatchdog: under systemd's watchdog (WATCHDOG_USEC) serve sends
// READY=1, then WATCHDOG=1 every half interval while the gateway answers.
func TestWatchdog(t *testing.T) {
	t.Parallel() // its own ports and data directory
	dir := t.TempDir()
	sock := filepath.Join(dir, "notify.sock")
	ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cfg := writeConfig(t, dir, testutil.FreePort(t), "")
	startServe(t, []string{"NOTIFY_SOCKET=" + sock, "WATCHDOG_USEC=1000000"}, "-c", cfg)
	var got []string
	buf := make([]byte, 512)
	deadline := time.Now().Add(60 * time.Second)
	for pings := 0; pings < 3; {
		ln.SetReadDeadline(deadline)
		n, err := ln.Read(buf)
		if err != nil {
			t.Fatalf("after %q: %v (want READY=1 and three WATCHDOG=1)", got, err)
		}
		msg := string(buf[:n])
		got = append(got, msg)
		if strings.Contains(msg, "WATCHDOG=1") {
			if !strings.Contains(strings.Join(got, "\n"), "READY=1") {
				t.Fatalf("WATCHDOG=1 before READY=1: %q", got)
			}
			pings++
		}
	}
}
