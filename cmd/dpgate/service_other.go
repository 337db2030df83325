//go:build !windows

package main

import (
	"context"
	"errors"
	"io"
)

// stopCtx never ends here: only a Windows service is asked to stop other
// than by a signal.
var stopCtx = context.Background()

func runService(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("service", "install NAME -- COMMAND [flags] | uninstall NAME", serviceAbout, stdout)
	if _, err := parse(fs, args); err != nil {
		return err
	}
	return errors.New("service: Windows only; here the systemd unit (configs/dpgate.service) or launchd (configs/dpgate-agent.plist) runs dpgate")
}
