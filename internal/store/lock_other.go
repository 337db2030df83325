//go:build !unix

package store

// lockFile: without flock, Reset relies on the rename failing while a
// gateway holds the file open (Windows refuses to rename an open file).
func lockFile(path string) (unlock func(), err error) { return func() {}, nil }
