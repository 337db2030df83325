//go:build windows

package gateway

// openFilesLimit: Windows has no per-process open-files limit of this
// kind; 0 is unknown, and nothing is lowered.
func openFilesLimit() int { return 0 }
