//go:build !unix

package gateway

// checkDataDir: on Windows, who may write to the data directory is its
// ACL, set by the service's installer (dpgate service install).
func checkDataDir(string) error { return nil }
