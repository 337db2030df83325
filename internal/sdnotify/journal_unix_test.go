//go:build !windows

package sdnotify

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestIsJournal: JOURNAL_STREAM names standard error's device and inode
// while it is the journal's stream; another file (standard error
// redirected by hand, a child's) is not.
func TestIsJournal(t *testing.T) {
	dir := t.TempDir()
	a, _ := os.Create(filepath.Join(dir, "a"))
	b, _ := os.Create(filepath.Join(dir, "b"))
	defer a.Close()
	defer b.Close()
	fi, _ := a.Stat()
	st := fi.Sys().(*syscall.Stat_t)
	stream := fmt.Sprintf("%d:%d", st.Dev, st.Ino)
	if !isJournal(stream, a) {
		t.Errorf("%s is not a's stream", stream)
	}
	for _, s := range []string{"", "garbage", "0:0"} {
		if isJournal(s, a) {
			t.Errorf("JOURNAL_STREAM %q taken for a's stream", s)
		}
	}
	if isJournal(stream, b) {
		t.Errorf("b taken for a's stream %s", stream)
	}
}
