// Package sdnotify tells systemd about the service's state (sd_notify(3)):
// READY=1 once serving, STOPPING=1 when shutting down, MAINPID=N when an
// upgrade hands the service to a new process. Outside systemd
// (NOTIFY_SOCKET unset) every call does nothing.
package sdnotify

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"time"
)

// Notify sends state (newline-separated KEY=VALUE assignments) to the
// socket in NOTIFY_SOCKET. It reports whether there was one to send to.
func Notify(state string) (bool, error) {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return false, nil
	}
	addr := &net.UnixAddr{Name: path, Net: "unixgram"}
	if path[0] == '@' { // the abstract namespace: a leading NUL byte
		addr.Name = "\x00" + path[1:]
	}
	c, err := net.DialUnix("unixgram", nil, addr)
	if err != nil {
		return true, fmt.Errorf("sdnotify: %w", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(state)); err != nil {
		return true, fmt.Errorf("sdnotify: %w", err)
	}
	return true, nil
}

// WatchdogInterval is how often systemd wants WATCHDOG=1 (WatchdogSec=,
// from WATCHDOG_USEC), and whether the watchdog is on for this process:
// WATCHDOG_PID, when set, must be this process, unless anyPID (a process
// started by an upgrade inherits the old one's environment and becomes
// the main process only after the handover).
func WatchdogInterval(anyPID bool) (time.Duration, bool) {
	usec, err := strconv.ParseInt(os.Getenv("WATCHDOG_USEC"), 10, 64)
	if err != nil || usec <= 0 {
		return 0, false
	}
	if pid := os.Getenv("WATCHDOG_PID"); pid != "" && !anyPID && pid != strconv.Itoa(os.Getpid()) {
		return 0, false
	}
	return time.Duration(usec) * time.Microsecond, true
}
