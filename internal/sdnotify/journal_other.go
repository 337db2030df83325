//go:build windows

package sdnotify

// StderrIsJournal: no journald on Windows.
func StderrIsJournal() bool { return false }
