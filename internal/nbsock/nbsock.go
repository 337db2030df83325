// Package nbsock reads a TCP socket under crypto/tls without blocking:
// the push server's idle sessions wait for their socket on a small stack
// (push/frames.go), and the proxy gathers the records a side has already
// received into one write (proxy/sock.go). It also writes without
// blocking, so that the push server arms a write deadline only for a
// write that would wait.
//
// A read that finds nothing returns ErrWouldBlock, which crypto/tls takes
// as temporary: it keeps the part of a record it has and reads on at its
// next call (Go 1.26's conn.go, readRecordOrCCS). Should a release of Go
// make every read error final, push's TestFramesAcrossRecords and the
// proxy's TestGatherKeepsOrder fail.
package nbsock

import "net"

// ErrWouldBlock is what TryRead returns when the socket has nothing yet.
var ErrWouldBlock net.Error = wouldBlock{}

type wouldBlock struct{}

func (wouldBlock) Error() string   { return "nothing to read yet" }
func (wouldBlock) Timeout() bool   { return false }
func (wouldBlock) Temporary() bool { return true }

// Socket reads one TCP connection's socket directly, through its
// syscall.RawConn. The connection's read deadline applies. One goroutine
// reads at a time.
type Socket struct {
	raw
	into []byte // what the next read fills
	n    int
	err  error

	// TryWrite's, apart from the reads': one goroutine writes at a time,
	// beside the one reading.
	from []byte
	wn   int
	werr error
}
