//go:build !windows

package sdnotify

import (
	"os"
	"strconv"
	"strings"
	"syscall"
)

// StderrIsJournal reports whether standard error is the journal's stream:
// systemd names it in JOURNAL_STREAM ("device:inode") for a service whose
// output goes there, and a standard error redirected since is another file.
func StderrIsJournal() bool { return isJournal(os.Getenv("JOURNAL_STREAM"), os.Stderr) }

func isJournal(stream string, f *os.File) bool {
	dev, ino, ok := strings.Cut(stream, ":")
	if !ok {
		return false
	}
	fi, err := f.Stat()
	if err != nil {
		return false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && strconv.FormatUint(uint64(st.Dev), 10) == dev && strconv.FormatUint(uint64(st.Ino), 10) == ino
}
