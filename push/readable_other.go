//go:build !unix

package push

import "net"

// readableWaiter returns nil here (Windows has no MSG_DONTWAIT for a peek
// that must not block): an idle session's goroutine waits inside
// crypto/tls, with the 4 KiB stack that takes instead of 2 KiB
// (docs/ARCHITECTURE.md, "The life of a push").
func readableWaiter(net.Conn) func() error { return nil }
