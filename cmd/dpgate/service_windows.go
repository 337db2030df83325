package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"time"

	"golang.org/x/sys/windows/svc"
	"golang.org/x/sys/windows/svc/eventlog"
	"golang.org/x/sys/windows/svc/mgr"
)

// stopCtx ends when the service control manager asks the service to stop
// (a service stop, or Windows shutting down); serve and agent stop on it
// as on SIGTERM.
var stopCtx, requestStop = context.WithCancel(context.Background())

// runService installs, removes or (as the service control manager starts
// it) runs a dpgate service.
func runService(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("service", "install NAME -- COMMAND [flags] | uninstall NAME", serviceAbout, stdout)
	var rest []string // the command after "--", with its own flags
	if i := slices.Index(args, "--"); i >= 0 {
		args, rest = args[:i], args[i+1:]
	}
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 2 {
		return usagef("service needs install NAME -- COMMAND ..., uninstall NAME or run NAME -- COMMAND ...")
	}
	verb, name := pos[0], pos[1]
	switch verb {
	case "install":
		if len(rest) == 0 || (rest[0] != "serve" && rest[0] != "agent") {
			return usagef("service install %s -- serve ... or -- agent ...", name)
		}
		return installService(name, rest, stdout)
	case "uninstall":
		return uninstallService(name, stdout)
	case "run":
		return runAsService(name, rest)
	}
	return usagef("service: unknown subcommand %q (install, uninstall)", verb)
}

func installService(name string, command []string, stdout io.Writer) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	m, err := mgr.Connect()
	if err != nil {
		return fmt.Errorf("service: connecting to the service manager (run as Administrator): %w", err)
	}
	defer m.Disconnect()
	if s, err := m.OpenService(name); err == nil {
		s.Close()
		return fmt.Errorf("service %s exists already (dpgate service uninstall %s first)", name, name)
	}
	s, err := m.CreateService(name, exe, mgr.Config{
		DisplayName: "dpgate " + name,
		Description: "dpgate distribution-point gateway: " + command[0],
		StartType:   mgr.StartAutomatic,
	}, append([]string{"service", "run", name, "--"}, command...)...)
	if err != nil {
		return fmt.Errorf("service: %w", err)
	}
	defer s.Close()
	// Restarted 5 s after a failure, the counter reset after a day.
	if err := s.SetRecoveryActions([]mgr.RecoveryAction{{Type: mgr.ServiceRestart, Delay: 5 * time.Second}}, 86400); err != nil {
		return fmt.Errorf("service: recovery actions: %w", err)
	}
	eventlog.InstallAsEventCreate(name, eventlog.Error|eventlog.Warning|eventlog.Info)
	fmt.Fprintf(stdout, "service %s installed (%s %v); start it with: sc start %s\n", name, exe, command, name)
	return nil
}

func uninstallService(name string, stdout io.Writer) error {
	m, err := mgr.Connect()
	if err != nil {
		return fmt.Errorf("service: connecting to the service manager (run as Administrator): %w", err)
	}
	defer m.Disconnect()
	s, err := m.OpenService(name)
	if err != nil {
		return fmt.Errorf("service %s: %w", name, err)
	}
	defer s.Close()
	if err := s.Delete(); err != nil {
		return fmt.Errorf("service %s: %w", name, err)
	}
	eventlog.Remove(name)
	fmt.Fprintf(stdout, "service %s removed\n", name)
	return nil
}

// runAsService runs command under the service control manager (what the
// installed service's command line says): its output to
// %ProgramData%\dpgate\NAME.log, a stop or a shutdown turned into
// requestStop, which serve and agent take as SIGTERM. Started any other
// way, svc.Run fails: it cannot reach the service manager.
func runAsService(name string, command []string) error {
	dir := filepath.Join(os.Getenv("ProgramData"), "dpgate")
	os.MkdirAll(dir, 0o755)
	logFile, err := os.OpenFile(filepath.Join(dir, name+".log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer logFile.Close()
	return svc.Run(name, &service{command: command, log: logFile})
}

type service struct {
	command []string
	log     io.Writer
}

// Execute is the service's life: running until the command ends, or
// stopping it when asked.
func (s *service) Execute(_ []string, req <-chan svc.ChangeRequest, status chan<- svc.Status) (bool, uint32) {
	status <- svc.Status{State: svc.StartPending}
	done := make(chan int, 1)
	go func() { done <- run(s.command, s.log, s.log) }() // ends when the command does
	status <- svc.Status{State: svc.Running, Accepts: svc.AcceptStop | svc.AcceptShutdown}
	for {
		select {
		case code := <-done:
			return false, uint32(code) // a failure: the recovery actions restart it
		case r := <-req:
			switch r.Cmd {
			case svc.Interrogate:
				status <- r.CurrentStatus
			case svc.Stop, svc.Shutdown:
				status <- svc.Status{State: svc.StopPending, WaitHint: 30_000}
				requestStop()
				select {
				case <-done: // stopped as asked: a clean exit, not a failure to recover from
					return false, 0
				case <-time.After(30 * time.Second):
					fmt.Fprintln(s.log, "dpgate service: the command did not stop within 30 s")
					return false, 1
				}
			}
		}
	}
}
