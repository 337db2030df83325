//go:build !linux

package store

import "os"

// syncData makes f's data durable.
func syncData(f *os.File) error { return f.Sync() }

// allocate gives f blocks up to size, reading as zeros.
func allocate(f *os.File, from, size int64) error { return zero(f, from, size) }
