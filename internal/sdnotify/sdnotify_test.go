package sdnotify

import (
	"net"
	"path/filepath"
	"testing"
	"time"
)

func TestNotify(t *testing.T) {
	for _, abstract := range []bool{false, true} {
		name := filepath.Join(t.TempDir(), "notify.sock")
		env := name
		if abstract {
			name = "\x00dpgate-sdnotify-test-" + time.Now().Format("150405.000000000")
			env = "@" + name[1:]
		}
		ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		t.Setenv("NOTIFY_SOCKET", env)
		sent, err := Notify("MAINPID=42\nREADY=1")
		if !sent || err != nil {
			t.Fatalf("abstract %v: Notify = %v, %v; want sent, no error", abstract, sent, err)
		}
		buf := make([]byte, 256)
		ln.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := ln.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		if got := string(buf[:n]); got != "MAINPID=42\nREADY=1" {
			t.Errorf("abstract %v: systemd got %q, want %q", abstract, got, "MAINPID=42\nREADY=1")
		}
	}
	t.Setenv("NOTIFY_SOCKET", "")
	if sent, err := Notify("READY=1"); sent || err != nil {
		t.Errorf("without NOTIFY_SOCKET: Notify = %v, %v; want nothing sent, no error", sent, err)
	}
}

func TestWatchdogInterval(t *testing.T) {
	t.Setenv("WATCHDOG_USEC", "30000000")
	t.Setenv("WATCHDOG_PID", "")
	if d, ok := WatchdogInterval(false); !ok || d != 30*time.Second {
		t.Errorf("WATCHDOG_USEC=30000000: %v %v, want 30s", d, ok)
	}
	t.Setenv("WATCHDOG_PID", "1") // another process's
	if _, ok := WatchdogInterval(false); ok {
		t.Error("the watchdog of another pid counted as ours")
	}
	if _, ok := WatchdogInterval(true); !ok {
		t.Error("an upgraded process did not take the watchdog over")
	}
	t.Setenv("WATCHDOG_USEC", "")
	if _, ok := WatchdogInterval(true); ok {
		t.Error("watchdog on without WATCHDOG_USEC")
	}
}
