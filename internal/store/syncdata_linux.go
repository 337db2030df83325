package store

import (
	"os"

	"golang.org/x/sys/unix"
)

// syncData makes f's data durable (fdatasync: the size too, not the times).
func syncData(f *os.File) error { return unix.Fdatasync(int(f.Fd())) }

// allocate gives f blocks up to size, reading as zeros (fallocate; where
// the file system cannot, zeros are written).
func allocate(f *os.File, from, size int64) error {
	if err := unix.Fallocate(int(f.Fd()), 0, from, size-from); err == nil {
		return nil
	}
	return zero(f, from, size)
}
