package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	metrics "github.com/hashicorp/go-metrics"
	"gopkg.in/yaml.v3"

	"github.com/dpgate/dpgate/internal/admin"
	"github.com/dpgate/dpgate/internal/config"
	"github.com/dpgate/dpgate/internal/gateway"
	"github.com/dpgate/dpgate/tlsconf"
)

const serveAbout = `
Runs the gateway. Without -c it runs on built-in defaults: admin API on
127.0.0.1:13290, a certificate generated into the data directory on first
start (its pin is logged), and the proxy off until an upstream is configured.

Signals: SIGINT/SIGTERM shut down gracefully (a second one stops at once),
SIGHUP reloads certificates, the allow-list and token keys, SIGUSR1 dumps metrics to
standard error.`

func runServe(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("serve", "[-c FILE]", serveAbout, stdout)
	cfgFile := fs.String("c", "", "configuration `FILE` (default: built-in defaults)")
	grace := fs.Duration("shutdown-timeout", 10*time.Second, "how long a graceful shutdown may drain connections")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("serve takes no arguments, got %q", pos)
	}
	cfg, err := loadConfig(*cfgFile)
	if err != nil {
		return err
	}
	log := newLogger(cfg.Log, stderr)
	slog.SetDefault(log)

	gw, err := gateway.New(cfg, gateway.Options{Logger: log, GlobalMetrics: true})
	if err != nil {
		return err
	}
	ls, err := gateway.Listen(cfg)
	if err != nil {
		gw.Close()
		return err
	}
	gw.Start(ls)

	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	dump := metrics.NewInmemSignal(gw.Telemetry().Inmem, syscall.SIGUSR1, stderr)
	defer dump.Stop()

	for {
		select {
		case err := <-gw.Done():
			log.Error("stopping after a fatal error", "err", err)
			gw.Close()
			return err
		case s := <-sigs:
			if s == syscall.SIGHUP {
				gw.Reload() // logs its own outcome; a failed reload keeps running
				continue
			}
			log.Info("shutting down", "signal", s.String(), "timeout", grace.String())
			// A fresh context: the signal already ended the old one's purpose.
			ctx, cancel := context.WithTimeout(context.Background(), *grace)
			done := make(chan error, 1)
			go func() { done <- gw.Shutdown(ctx) }()
			select {
			case err = <-done:
			case s = <-sigs:
				log.Warn("second signal: stopping at once", "signal", s.String())
				cancel()
				err = <-done
			}
			cancel()
			if err != nil {
				log.Warn("shutdown did not drain cleanly", "err", err)
			}
			log.Info("stopped")
			return nil
		}
	}
}

// loadConfig reads the file, or the built-in defaults for "". Every
// problem is a usage error (exit 2).
func loadConfig(file string) (*config.Config, error) {
	var cfg *config.Config
	var err error
	if file == "" {
		cfg = config.Default()
		err = cfg.Validate()
	} else {
		cfg, err = config.Load(file)
	}
	if err != nil {
		return nil, usageError{err}
	}
	return cfg, nil
}

// adminClient is a client of the running gateway's admin API, as the
// configuration file (or the defaults) says where it listens and which
// token it wants.
func adminClient(file string) (*admin.Client, *config.Config, error) {
	cfg, err := loadConfig(file)
	if err != nil {
		return nil, nil, err
	}
	if cfg.Admin.Socket != "" { // no token needed, when this user may connect to it
		if c, err := admin.NewSocketClient(cfg.Admin.Socket, os.Getenv("DPGATE_TOKEN")); err == nil {
			return c, cfg, nil
		}
	}
	token, err := cliToken(cfg)
	if err != nil {
		return nil, nil, err
	}
	return admin.NewClient(cfg.Admin.Listen, token), cfg, nil
}

// cliToken is the admin token the CLI sends: DPGATE_TOKEN, else the file
// the gateway reads (admin.token_file, or data_dir/admin.token), so the
// operator running the CLI as the service user needs no flag. A default
// token file not created yet means no gateway has started here; the
// request then fails as unreachable or unauthorized, and commands that
// can work offline do.
func cliToken(cfg *config.Config) (string, error) {
	if t := os.Getenv("DPGATE_TOKEN"); t != "" {
		return t, nil
	}
	file, generated := cfg.AdminTokenFile()
	token, err := tlsconf.ReadSecretFile(file)
	switch {
	case err == nil:
		return token, nil
	case generated && errors.Is(err, os.ErrNotExist):
		return "", nil
	case errors.Is(err, os.ErrPermission):
		return "", fmt.Errorf("reading the admin token: %w (run as the user dpgate runs as, or set DPGATE_TOKEN)", err)
	default:
		return "", fmt.Errorf("reading the admin token: %w", err)
	}
}

func newLogger(c config.Log, w io.Writer) *slog.Logger {
	var level slog.Level
	level.UnmarshalText([]byte(c.Level)) // validated by config
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

const configAbout = `
Reads a configuration file, applies the defaults and checks every value,
then prints the complete effective configuration. Exit status 2 and an
error naming the key and line when something is wrong.`

func runConfig(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("config", "[-c FILE]", configAbout, stdout)
	cfgFile := fs.String("c", "", "configuration `FILE` (default: built-in defaults)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("config takes no arguments, got %q", pos)
	}
	cfg, err := loadConfig(*cfgFile)
	if err != nil {
		return err
	}
	out, err := yaml.Marshal(cfg)
	if err != nil {
		return err
	}
	_, err = stdout.Write(out)
	return err
}

func runVersion(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("version", "", "Prints the version, the commit it was built from and the Go version.", stdout)
	if _, err := parse(fs, args); err != nil {
		return err
	}
	v := gateway.Version()
	fmt.Fprintf(stdout, "dpgate %s\ncommit %s\n%s\n", v.Version, v.Commit, v.GoVersion)
	return nil
}
