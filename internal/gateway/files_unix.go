//go:build !windows

package gateway

import (
	"math"
	"syscall"
)

// openFilesLimit is RLIMIT_NOFILE's soft limit (Go raises it to the hard
// one at start), 0 if unknown.
func openFilesLimit() int {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil || r.Cur > math.MaxInt32 {
		return 0
	}
	return int(r.Cur)
}
