//go:build !unix

package push

// socketWait leaves wc without a wait here: the sockets Go's poller
// manages on Windows are not in non-blocking mode, so a read to try first
// would block. An idle session's goroutine waits inside crypto/tls, with
// the 4 KiB stack that takes instead of 2 KiB (docs/ARCHITECTURE.md, "The
// life of a push").
func socketWait(*waitConn) {}
