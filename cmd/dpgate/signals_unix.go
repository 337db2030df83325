//go:build unix

package main

import (
	"os"
	"syscall"
)

// The signals serve takes: SIGHUP reloads, SIGUSR2 upgrades, SIGUSR1
// writes the metrics to standard error.
var (
	reloadSignal  os.Signal = syscall.SIGHUP
	upgradeSignal os.Signal = syscall.SIGUSR2
	dumpSignal    os.Signal = syscall.SIGUSR1
)
