package store

// syncDir: Windows cannot flush a directory (opening one to sync is
// "Access denied"); NTFS journals the rename itself.
func syncDir(string) error { return nil }
