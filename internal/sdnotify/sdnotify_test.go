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
