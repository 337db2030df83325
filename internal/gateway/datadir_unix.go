//go:build unix

package gateway

import (
	"fmt"
	"os"
	"syscall"
)

// checkDataDir refuses a data directory that another user may write to,
// or that another user owns: they could replace the store, the
// certificate's key or the admin token with their own (the token's own
// check looks at its mode, which they would set to 0600). As sshd's
// StrictModes does for a home directory. The directory is made (0700)
// when it does not exist yet.
func checkDataDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("data_dir: %w", err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("data_dir: %w", err)
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Errorf("data_dir %s has mode %04o, so other users may replace its files (the store, the certificate, the admin token): chmod go-w %s (and check who did)",
			dir, perm, dir)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() && st.Uid != 0 {
		return fmt.Errorf("data_dir %s belongs to uid %d, not to the user dpgate runs as (uid %d) or root: chown it to that user (and check who did)",
			dir, st.Uid, os.Geteuid())
	}
	return nil
}
