//go:build !unix

package proxy

// tryReads leaves every read blocking: Go's sockets on Windows are not
// non-blocking underneath, so a relay sends each record as it comes.
func tryReads(*sock) {}
