package store

import (
	"os"

	"golang.org/x/sys/unix"
)

// syncData makes f's data durable (fdatasync: the size too, not the times).
func syncData(f *os.File) error { return unix.Fdatasync(int(f.Fd())) }
