//go:build !unix

package main

import (
	"errors"
	"os"
)

// socketPair: upgrades need Unix (tableflip says so before this is used).
func socketPair() (*os.File, *os.File, error) {
	return nil, nil, errors.New("upgrades without downtime need a Unix system")
}
