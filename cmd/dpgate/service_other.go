//go:build !windows

package main

import (
	"errors"
	"io"
)

func runService(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("service", "install NAME -- COMMAND [flags] | uninstall NAME", serviceAbout, stdout)
	if _, err := parse(fs, args); err != nil {
		return err
	}
	return errors.New("service: Windows only; here the systemd unit (configs/dpgate.service) or launchd (configs/dpgate-agent.plist) runs dpgate")
}
