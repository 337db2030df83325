//go:build unix

package testutil

import (
	"os"
	"path/filepath"
	"strconv"
	"syscall"
)

// lockPort takes an exclusive lock on a file named for port in a
// directory of the machine's temporary directory, which every test
// process of the suite looks in; release gives it up. The files stay
// (empty, one a port ever used): deleting one while another process
// opens it would let two processes hold "the" lock at once.
func lockPort(port int) (release func(), ok bool) {
	dir := filepath.Join(os.TempDir(), "dpgate-test-ports")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, false
	}
	f, err := os.OpenFile(filepath.Join(dir, strconv.Itoa(port)), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, false
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, false
	}
	return func() { f.Close() }, true // closing the file drops the lock
}
