package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/dpgate/dpgate/internal/gateway"
)

const upgradeAbout = `
Upgrades the running gateway without closing a listening socket: a new
process, from the dpgate binary now installed where the running one was
started from and with the configuration file as it is now, takes over the
sockets and the store; the old process tells its push agents to reconnect
(they do, to the new one, within a second or so), finishes its proxy
relays (up to serve's --upgrade-drain) and exits. Install the new binary
first (replace the file, e.g. with mv), then run this. SIGUSR2 to the
gateway does the same without waiting; systemd's reload (ExecReload) runs
this command.

Waits until the new process serves and prints both process ids and
versions; exit status 1 if the upgrade failed (the old process then goes
on serving, and its log says why).`

func runUpgrade(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("upgrade", "[-c FILE]", upgradeAbout, stdout)
	cfgFile := fs.String("c", "", cfgFlagHelp)
	timeout := fs.Duration("timeout", 3*time.Minute, "how long to wait for the new process")
	if err := parseNoArgs(fs, args); err != nil {
		return err
	}
	api, _, err := adminClientOf(*cfgFile) // bounded by --timeout
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	var before gateway.Status
	if err := api.Do(ctx, "GET", "/v1/status", nil, &before); err != nil {
		return err
	}
	asked := time.Now().UTC()
	if err := api.Do(ctx, "POST", "/v1/upgrade", nil, nil); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "upgrading pid %d (version %s)...\n", before.PID, before.Version)
	// The old process answers until it hands over, the new one after:
	// requests in between wait in the shared listen backlog.
	var last error
	for {
		var st gateway.Status
		err := api.Do(ctx, "GET", "/v1/status", nil, &st)
		switch {
		case err == nil && st.PID != before.PID:
			fmt.Fprintf(stdout, "upgraded: pid %d (version %s) -> pid %d (version %s)\n", before.PID, before.Version, st.PID, st.Version)
			return nil
		case err == nil && st.Upgrade != nil && st.Upgrade.State == "failed" && !st.Upgrade.At.Before(asked):
			return fmt.Errorf("upgrade failed, pid %d goes on serving: %s", st.PID, st.Upgrade.Error)
		case err != nil:
			last = err
		}
		select {
		case <-ctx.Done():
			return errors.Join(fmt.Errorf("no new process serving after %s; see the gateway's log", *timeout), last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}
