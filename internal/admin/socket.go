package admin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
)

// ListenSocket opens the admin API's Unix socket at path, mode 0600 in a
// directory made 0700 if missing, as HAProxy's stats socket: whoever can
// open it is the operator, no token needed. A stale socket left by a
// crash is replaced; any other file there is an error. On Linux the
// peer's uid is checked too (only this process's user and root), which
// also covers the moment between bind and chmod.
func ListenSocket(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("admin.socket: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("admin.socket: %s exists and is not a socket", path)
		}
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("admin.socket: %s is in use by another process", path)
		}
		os.Remove(path) // stale, from a gateway that did not stop cleanly
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("admin.socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("admin.socket: %w", err)
	}
	return ln, nil
}

// socketKey marks a request that came over the Unix socket from an
// allowed peer.
type socketKey struct{}

// connContext marks connections over the Unix socket whose peer may act
// as the operator.
func connContext(ctx context.Context, c net.Conn) context.Context {
	if uc, ok := c.(*net.UnixConn); ok && peerAllowed(uc) {
		return context.WithValue(ctx, socketKey{}, true)
	}
	return ctx
}

func fromSocket(ctx context.Context) bool { v, _ := ctx.Value(socketKey{}).(bool); return v }

// errNotSocket is for NewSocketClient on a path that is not one.
var errNotSocket = errors.New("not a socket")
