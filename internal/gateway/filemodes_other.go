//go:build !unix

package gateway

import "github.com/dpgate/dpgate/internal/config"

// checkDataDir: on Windows, who may write to the data directory is its
// ACL, set by the service's installer (dpgate service install).
func checkDataDir(string) error { return nil }

// checkSecretFiles: on Windows, who may read a file is its ACL.
func checkSecretFiles(*config.Config) error { return nil }

// CheckSecretFile: on Windows, who may read a file is its ACL.
func CheckSecretFile(what, path string) error { return nil }
