// Package sdnotify tells systemd about the service's state (sd_notify(3)):
// READY=1 once serving, STOPPING=1 when shutting down, MAINPID=N when an
// upgrade hands the service to a new process. Outside systemd
// (NOTIFY_SOCKET unset) every call does nothing.
package sdnotify

import (
	"fmt"
	"net"
	"os"
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
