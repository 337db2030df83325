//go:build unix

package main

import (
	"os"
	"syscall"
)

// socketPair is a connected pair of Unix stream sockets, the handover
// channel between an upgrade's old and new process.
func socketPair() (*os.File, *os.File, error) {
	// Close-on-exec set under ForkLock, as os/exec does (SOCK_CLOEXEC is
	// not on every Unix): no process started meanwhile inherits them.
	syscall.ForkLock.RLock()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err == nil {
		syscall.CloseOnExec(fds[0])
		syscall.CloseOnExec(fds[1])
	}
	syscall.ForkLock.RUnlock()
	if err != nil {
		return nil, nil, err
	}
	for _, fd := range fds {
		syscall.SetNonblock(fd, true) // so that deadlines work on the *os.File
	}
	return os.NewFile(uintptr(fds[0]), "handover"), os.NewFile(uintptr(fds[1]), "handover (new process)"), nil
}
