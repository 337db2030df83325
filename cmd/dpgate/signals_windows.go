package main

import "os"

// Windows has no SIGHUP, SIGUSR1 or SIGUSR2: reload with POST /v1/reload,
// read the metrics at /metrics; upgrades without downtime need Unix (a
// restart of the service instead).
var reloadSignal, upgradeSignal, dumpSignal os.Signal
